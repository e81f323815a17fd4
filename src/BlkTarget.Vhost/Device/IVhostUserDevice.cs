using BlkTarget.Storage;
using BlkTarget.Vhost.Memory;
using BlkTarget.Vhost.Queues;
using BlkTarget.Vhost.Reactor;

namespace BlkTarget.Vhost.Device;

/// <summary>What a running queue needs at start: its ring in guest memory and the negotiated features.</summary>
/// <summary>Kick and call fds are borrowed from the session, which owns them; -1 means none. <see cref="Io"/> is
/// the I/O engine of the reactor that will own the queue.</summary>
/// <summary><see cref="DirtyLog"/>: with VHOST_F_LOG_ALL negotiated and a log set (SET_LOG_BASE), every guest page the queue
/// writes is marked there before the used entry that returns it; null when not logging. Used-ring writes are the
/// ring's business (<see cref="SplitRing.LogUsedRing"/>).</summary>
public sealed record QueueStartInfo(int Index, IVirtqueue Ring, GuestMemory Memory, ulong AckedFeatures, int KickFd, int CallFd, IoContext Io,
    DirtyLog? DirtyLog = null);

/// <summary>
/// A virtqueue while it runs on a reactor. Everything except construction and Dispose is called on the
/// owning reactor's thread.
/// </summary>
public interface IRunningQueue : IReactorQueue
{
    /// <summary>Replaces the call eventfd (-1: do not signal). The caller keeps ownership of the fd.</summary>
    void SetCallFd(int fd);

    /// <summary>Marks further writes in <paramref name="log"/> instead of the log the queue started with (SET_LOG_BASE
    /// replaced it). The caller releases the old log after this returns on the reactor.</summary>
    /// <exception cref="InvalidOperationException">the queue was started without a dirty log.</exception>
    void ReplaceDirtyLog(DirtyLog log);

    /// <summary>Stops taking new requests; <paramref name="onDrained"/> runs (on the reactor thread) once every
    /// request already taken has completed and its used entry is published, or, for a queue stopped by an internal
    /// error, once its backend has no operation in flight.</summary>
    void BeginStop(Action onDrained);

    /// <summary>
    /// Gives up on the requests still in flight (the stop timed out). From this call on the queue never touches its
    /// ring, kick or call eventfd again (the session closes them next) and publishes no completion; the pending
    /// <see cref="BeginStop"/> callback never runs. The caller then retires it from its reactor, which disposes it
    /// once <see cref="Reactor.IReactorQueue.BackendInFlight"/> is 0.
    /// </summary>
    void AbandonInFlight();

    /// <summary>The next avail index to process (see <see cref="IVirtqueue.LastAvailIdx"/>).</summary>
    ushort LastAvailIdx { get; }

    /// <summary>What GET_VRING_BASE reports (see <see cref="IVirtqueue.VringBase"/>).</summary>
    uint VringBase { get; }

    /// <summary>Requests taken from the ring and not completed yet. Written by the reactor; other threads read a
    /// recent value (for status reports).</summary>
    int InFlight { get; }

    /// <summary>Why the queue stopped processing (a guest error, or an internal one), or null while healthy.</summary>
    string? BrokenReason { get; }
}

/// <summary>
/// A virtio device model served over vhost-user (virtio-blk now, virtio-scsi later): its features, config
/// space and the queue runtime it creates. The session handles the protocol; the device handles requests.
/// </summary>
public interface IVhostUserDevice
{
    string Name { get; }

    /// <summary>virtio feature bits offered, including transport bits (VERSION_1, INDIRECT_DESC, EVENT_IDX).</summary>
    ulong Features { get; }

    int QueueCount { get; }

    /// <summary>Fills <paramref name="destination"/> with config space from <paramref name="offset"/>.</summary>
    void ReadConfig(uint offset, Span<byte> destination);

    /// <summary>Applies a guest config write; false when it is not allowed.</summary>
    bool WriteConfig(uint offset, ReadOnlySpan<byte> data);

    /// <summary>Creates the runtime of one queue. Called on the reactor thread that will own it.</summary>
    IRunningQueue CreateQueue(QueueStartInfo start);

    /// <summary>
    /// Device reset, with no queue running: RESET_DEVICE/RESET_OWNER, or the end of the session (the next
    /// frontend finds a fresh device). What the guest set (e.g. its write-cache choice) returns to the configured
    /// defaults. Stopping and restarting the queues is no reset: QEMU does that when it pauses the VM too, and the
    /// guest must keep the cache mode it chose (QEMU's vhost-user-blk even keeps serving the guest its own cached
    /// copy of the writeback byte across a guest reboot).
    /// </summary>
    void Reset();

    /// <summary>
    /// <paramref name="backend"/> (one of this device's disks) has grown (<see cref="IBlockDevice.Resize"/>): the
    /// device shows the new size from now on. True when its config space changed, so the frontend must be sent
    /// VHOST_USER_BACKEND_CONFIG_CHANGE_MSG; devices that tell the guest themselves (virtio-scsi: a unit attention,
    /// an event) return false. Called on the management thread.
    /// </summary>
    bool MediumResized(IBlockDevice backend);

    /// <summary>A frontend connected: session <paramref name="session"/> (1, 2, ... per listening socket) begins. Called
    /// before its first message. SCSI devices start a new I_T nexus per session.</summary>
    void Connected(int session) { }
}
