using BlkTarget.Storage;
using BlkTarget.Storage.Interop;
using BlkTarget.Vhost.Device;
using BlkTarget.Vhost.Memory;
using BlkTarget.Vhost.Queues;
using Microsoft.Extensions.Logging;

namespace BlkTarget.Vhost.Scsi;

/// <summary>
/// The virtio-scsi event queue (virtio 1.2 5.6.6.3). The driver posts empty device-writable buffers; the device
/// fills one with a struct virtio_scsi_event when it has something to say (a LUN added or removed, a capacity
/// change). A buffer is taken from the ring only when an event is delivered into it, so the avail index reported
/// on stop leaves every unused buffer with the driver, and nothing is ever in flight. Events come from the
/// device's <see cref="ScsiEventSource"/>; the kick fd is watched so that events waiting for a buffer go out as
/// soon as the driver posts one.
/// </summary>
public sealed unsafe class ScsiEventQueue : IRunningQueue
{
    /// <summary>Segments a walked event chain may have (a well-behaved driver uses one 16-byte buffer).</summary>
    private const int MaxSegments = 16;

    private readonly IVirtqueue _ring;
    private readonly QueueStartInfo _start;
    private readonly ScsiEventSource _source;
    private readonly ILogger _log;
    private readonly IoVec[] _segments = GC.AllocateArray<IoVec>(MaxSegments, pinned: true);
    private int _callFd;
    private string? _broken;
    /// <summary>VHOST_F_LOG_ALL: where the event buffers written are marked, or null.</summary>
    private DirtyLog? _dirtyLog;

    public ScsiEventQueue(QueueStartInfo start, ScsiEventSource source, string deviceName, ILogger log)
    {
        _start = start;
        _ring = start.Ring;
        _source = source;
        _log = log;
        _callFd = start.CallFd;
        _dirtyLog = start.DirtyLog;
        DeviceName = deviceName;
        _source.Attach(start.Io);
    }

    public string DeviceName { get; }
    public int Index => _start.Index;
    public int KickFd => _start.KickFd;
    public ushort LastAvailIdx => _ring.LastAvailIdx;
    public uint VringBase => _ring.VringBase;
    public string? BrokenReason => _broken;
    public bool Faulted => false;
    public int BackendInFlight => 0;
    /// <summary>Nothing is ever taken from the ring without being answered at once.</summary>
    public int InFlight => 0;

    public int Poll()
    {
        if (_broken is not null || !_source.Pending) return 0;
        int delivered = 0;
        Span<byte> info = stackalloc byte[VirtioScsi.EventInfoSize];
        while (_source.Pending)
        {
            bool hasEvent = _source.TryPeek(out var next);
            fixed (IoVec* segments = _segments)
            {
                var chain = new ChainBuffers(segments, MaxSegments);
                var status = _ring.TryPopChain(_start.Memory, ref chain, out ushort id, out string? error);
                if (status == PopStatus.Empty) break;      // waits for the driver's next buffer (it kicks)
                if (status == PopStatus.Corrupt)
                {
                    Stop($"event queue ring: {error}");
                    break;
                }
                if (chain.ReadableCount != 0 || chain.Overflowed || chain.WritableBytes < VirtioScsi.EventInfoSize)
                {
                    Stop($"event buffer at descriptor {id} is not one device-writable buffer of {VirtioScsi.EventInfoSize} bytes");
                    break;
                }
                bool missed = _source.TakeMissed();
                if (hasEvent) next.Write(info, missed);
                else new ScsiEvent(0, 0, 0, 0).Write(info, eventsMissed: true);   // VIRTIO_SCSI_T_NO_EVENT | MISSED
                Scatter(info, ref chain);
                if (_dirtyLog is not null)
                    for (int i = 0; i < chain.Count; i++) _dirtyLog.MarkHost(_start.Memory, segments[i].Base, segments[i].Length);
                if (hasEvent) _source.Dequeue();
                _ring.PushUsed(id, VirtioScsi.EventInfoSize);
                delivered++;
            }
        }
        if (delivered > 0)
        {
            _ring.PublishUsed();
            if (_callFd >= 0 && _ring.ShouldSignal()) EventFd.Signal(_callFd);
        }
        return delivered;
    }

    private static void Scatter(ReadOnlySpan<byte> info, ref ChainBuffers chain)
    {
        int at = 0;
        for (int i = chain.ReadableCount; i < chain.Count && at < info.Length; i++)
        {
            int n = (int)Math.Min((ulong)chain.Segments[i].Length, (ulong)(info.Length - at));
            info.Slice(at, n).CopyTo(new Span<byte>(chain.Segments[i].Base, n));
            at += n;
        }
    }

    private void Stop(string reason)
    {
        _broken = reason;
        _log.LogError("{Device}: queue {Index} stopped: {Reason}", DeviceName, Index, reason);
    }

    /// <summary>Sleep only with notifications on (so the driver's next buffer kicks us), unless events wait and
    /// buffers arrived meanwhile.</summary>
    public bool PrepareToSleep() => _ring.EnableNotifications() && _source.Pending && _broken is null;

    public void WokeUp() { }
    public void Fault(Exception error) => _broken ??= $"internal error: {error.Message}";
    public void SetCallFd(int fd) => _callFd = fd;

    public void ReplaceDirtyLog(DirtyLog log)
    {
        if (_dirtyLog is null) throw new InvalidOperationException("the queue was started without dirty logging");
        _dirtyLog = log;
    }
    public void BeginStop(Action onDrained) => onDrained();
    public void AbandonInFlight() { }
    public void Dispose() => _source.Attach(null);
}
