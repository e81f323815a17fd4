using BlkTarget.Storage.Interop;
using BlkTarget.Storage.Network;
using Microsoft.Extensions.Logging;
using static BlkTarget.Storage.Interop.RbdNative;

namespace BlkTarget.Storage.Rbd;

/// <summary>
/// A Ceph RBD image exported as a disk through librbd. The image is opened once per disk on the process' shared
/// connection to its cluster (<see cref="RbdCluster"/>); every reactor's channel submits to that one handle, so the
/// image's exclusive lock stays with this process instead of bouncing between handles.
/// <para>
/// Completions: librbd is told to signal one eventfd per image (<c>rbd_set_image_notification</c>, EVENT_TYPE_EVENTFD)
/// instead of calling back on its threads. Each channel puts that eventfd into its reactor's sleep set
/// (<see cref="IoContext.AddWakeSource"/>) and polls the image on every reactor round (<see cref="PollCompletions"/>:
/// <c>rbd_poll_io_events</c>). A completion's argument names the channel and slot that issued it: the reactor that
/// reaped it completes its own channel's at once and posts another channel's to that channel's lock-free
/// <see cref="CompletionInbox"/>, waking its reactor. With one reactor per disk every completion is handled where it
/// was reaped; with several, one hop at most.
/// </para>
/// <para>
/// Size: read at open; <see cref="Resize"/> grows the image (rbd_resize); a resize made elsewhere (<c>rbd resize</c>)
/// arrives through rbd_update_watch (<see cref="RbdSizeWatch"/>), is published as the new <see cref="Info"/> and
/// raised as <see cref="ExternallyResized"/>. Shrinking is never published: requests past the new end fail in librbd.
/// </para>
/// </summary>
public sealed class RbdDisk : IBlockDevice, IExternalResizeSource
{
    /// <summary>librbd's default discard granularity (rbd_discard_granularity_bytes): smaller discards may free nothing.</summary>
    private const uint DiscardGranularity = 64 << 10;
    private const ulong MaxZeroingBytes = 1UL << 30;
    private const int PollBatch = 32;

    private readonly RbdCluster _cluster;

    /// <summary>The shared connection this disk uses (tests: sharing).</summary>
    internal RbdCluster Cluster => _cluster;
    private readonly RadosIoCtxHandle _ioctx;
    private readonly RbdImageHandle _image;
    private readonly OwnedFd _notify;
    private readonly ILogger _log;
    private readonly object _gate = new();
    private readonly RbdSizeWatch _sizeWatch;
    private readonly ChannelTable<RbdChannel> _channels = new();
    private volatile BlockDeviceInfo _info;
    private bool _disposed;

    private RbdDisk(RbdDiskOptions options, RbdCluster cluster, RadosIoCtxHandle ioctx, RbdImageHandle image, OwnedFd notify,
        BlockDeviceInfo info, ILogger log)
    {
        Options = options;
        _cluster = cluster;
        _ioctx = ioctx;
        _image = image;
        _notify = notify;
        _info = info;
        _log = log;
        _sizeWatch = new RbdSizeWatch(image, OnImageUpdated);
    }

    public RbdDiskOptions Options { get; }

    public BlockDeviceInfo Info => _info;

    /// <summary>Raised (on a thread-pool thread) after a size change made outside this process was published in
    /// <see cref="Info"/>; the argument is the new size in bytes.</summary>
    public event Action<ulong>? ExternallyResized;

    /// <summary>The open image for one librbd call, or 0 once the disk is closed; give a nonzero one back with
    /// <see cref="ExitImage"/> (an interlocked count, so rbd_close never runs under a call).</summary>
    internal nint EnterImage() => _image.TryEnter();

    internal void ExitImage() => _image.Exit();

    /// <summary>The eventfd librbd signals when an operation of this image completed.</summary>
    internal int NotifyFd => _notify.Fd;

    /// <summary>
    /// Connects (or joins the connection) to the cluster, opens the image and reads its size.
    /// </summary>
    /// <exception cref="ArgumentException">the block size is not 512 or 4096.</exception>
    /// <exception cref="IOException">the cluster, pool or image cannot be opened, or the image's size is not whole
    /// blocks; one sentence naming what failed.</exception>
    public static RbdDisk Open(RbdDiskOptions options, ILogger log)
    {
        if (options.BlockSize is not (512 or 4096)) throw new ArgumentException($"block size must be 512 or 4096, not {options.BlockSize}");
        var cluster = RbdCluster.Acquire(options);
        RadosIoCtxHandle? ioctx = null;
        RbdImageHandle? image = null;
        OwnedFd? notify = null;
        try
        {
            ioctx = new RadosIoCtxHandle(cluster.Handle, options.Pool);
            image = new RbdImageHandle(ioctx, options.Image, options.ReadOnly);
            Check(rbd_get_size(image.DangerousGetHandle(), out ulong size), $"rbd {options.Name}: reading the size");
            if (size == 0 || size % options.BlockSize != 0)
                throw new IOException($"rbd {options.Name}: size {size} is not a positive multiple of the block size {options.BlockSize}");
            notify = EventFd.Create();
            Check(rbd_set_image_notification(image.DangerousGetHandle(), notify.Fd, EVENT_TYPE_EVENTFD), $"rbd {options.Name}: setting the completion eventfd");
            var info = new BlockDeviceInfo(size, options.BlockSize, options.ReadOnly, SupportsDiscard: true, SupportsWriteZeroes: true,
                HasVolatileCache: options.Writeback)
            {
                DiscardGranularity = DiscardGranularity,
                MaxDiscardBytes = MaxZeroingBytes,
                MaxWriteZeroesBytes = MaxZeroingBytes,
            };
            log.LogInformation("rbd {Image}: opened, {Size} bytes, cache {Cache}{ReadOnly}", options.Name, size,
                options.Writeback ? "writeback" : "none", options.ReadOnly ? ", read-only" : "");
            return new RbdDisk(options, cluster, ioctx, image, notify, info, log);
        }
        catch
        {
            notify?.Dispose();
            image?.Dispose();
            ioctx?.Dispose();
            cluster.Release();
            throw;
        }
    }

    private static void Check(int result, string what)
    {
        if (result < 0) throw new IOException(Describe(what, result), -result);
    }

    public IBlockChannel OpenChannel(IoContext io, IBlockCompletionSink sink, int maxInFlight)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return new RbdChannel(this, io, sink, maxInFlight, _log);
    }

    /// <summary>Puts a channel into the routing table; its index is the high half of its completions' argument.</summary>
    internal int Register(RbdChannel channel) => _channels.Add(channel);

    /// <summary>Takes a channel out of the routing table once nothing of it is outstanding (its index may be reused).</summary>
    internal void Unregister(int id) => _channels.Remove(id);

    /// <summary>
    /// Reaps every completion the image has ready (rbd_poll_io_events; an empty poll is normal) and routes each by its
    /// argument: <paramref name="self"/>'s are handled at once on this thread, other channels' are delivered to their
    /// inbox. Any thread; returns how many were reaped.
    /// </summary>
    internal unsafe int PollCompletions(RbdChannel? self)
    {
        nint* completions = stackalloc nint[PollBatch];
        int total = 0;
        while (true)
        {
            nint image = EnterImage();
            if (image == 0) return total;
            int n;
            try
            {
                n = rbd_poll_io_events(image, completions, PollBatch);
            }
            finally
            {
                ExitImage();
            }
            if (n <= 0) return total;
            for (int i = 0; i < n; i++)
            {
                nint completion = completions[i];
                long result = rbd_aio_get_return_value(completion);
                ulong argument = (ulong)rbd_aio_get_arg(completion);
                rbd_aio_release(completion);
                Route(argument, result, self);
            }
            total += n;
            if (n < PollBatch) return total;
        }
    }

    private void Route(ulong argument, long result, RbdChannel? self)
    {
        int id = (int)(argument >> 32);
        int slot = (int)(uint)argument;
        var channel = _channels[id];
        if (channel is null)
        {
            _log.LogError("rbd {Image}: completion for unknown channel {Channel} slot {Slot} dropped", Options.Name, id, slot);
            return;
        }
        if (channel == self) channel.Completed(slot, result);
        else channel.Deliver(slot, result);
    }

    /// <summary>
    /// Grows the image to <paramref name="newSizeBytes"/> with rbd_resize, then publishes the new <see cref="Info"/>.
    /// </summary>
    /// <exception cref="ArgumentException">see <see cref="ResizeRules.CheckGrowth"/>.</exception>
    /// <exception cref="IOException">librbd refused (nothing changed).</exception>
    public void Resize(ulong newSizeBytes)
    {
        lock (_gate)
        {
            var info = _info;
            ResizeRules.CheckGrowth(info, newSizeBytes);
            Check(rbd_resize(_image.DangerousGetHandle(), newSizeBytes), $"rbd {Options.Name}: resizing to {newSizeBytes} bytes");
            _info = info with { SizeBytes = newSizeBytes };
        }
    }

    /// <summary>The image's header changed (size, snapshots, features): publish a larger size. Thread-pool thread.</summary>
    private void OnImageUpdated()
    {
        ulong size;
        lock (_gate)
        {
            if (_disposed) return;
            if (rbd_get_size(_image.DangerousGetHandle(), out size) < 0) return;
            var info = _info;
            if (size == info.SizeBytes) return;
            if (size < info.SizeBytes || size % info.BlockSize != 0)
            {
                _log.LogWarning("rbd {Image}: resized outside to {Size} bytes; keeping {Current} bytes (only growth to whole blocks is passed on)",
                    Options.Name, size, info.SizeBytes);
                return;
            }
            _info = info with { SizeBytes = size };
        }
        _log.LogInformation("rbd {Image}: grown outside to {Size} bytes", Options.Name, size);
        ExternallyResized?.Invoke(size);
    }

    /// <summary>
    /// Closes the image: stops the size watch, reaps what is still outstanding (up to 30 s; channels get their
    /// completions through their inboxes), then closes the image, its pool context and its share of the connection.
    /// </summary>
    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed) return;
            _disposed = true;
        }
        _sizeWatch.Dispose();
        var deadline = Environment.TickCount64 + 30_000;
        while (_channels.Snapshot.Any(c => c is { InFlight: > 0 }) && Environment.TickCount64 < deadline)
        {
            if (PollCompletions(null) == 0) Thread.Sleep(1);
        }
        _image.Dispose();
        _notify.Dispose();
        _ioctx.Dispose();
        _cluster.Release();
    }
}
