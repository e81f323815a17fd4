using BlkTarget.Storage.Interop;
using Microsoft.Extensions.Logging;

namespace BlkTarget.Storage.Image;

/// <summary>
/// A thin-provisioned BlkTarget image exported as a disk. Allocated clusters are read and written through
/// the reactors' io_uring straight into guest memory, like a raw file; unallocated clusters read as zeros
/// without I/O; the first write to a cluster allocates it (<see cref="ImageFile"/> keeps that crash-safe). All
/// metadata changes run on the disk's <see cref="ImageMetadataWorker"/> thread, ordered against the I/O of every
/// channel by <see cref="ClusterRangeLocks"/>; so does growing it (<see cref="Resize"/>).
/// </summary>
public sealed class ImageDisk : IBlockDevice
{
    private readonly List<ImageChannel> _channels = [];
    private readonly ImageMetadataWorker? _worker;
    private readonly Lock _resizeGate = new();
    private volatile BlockDeviceInfo _info;

    private ImageDisk(ImageFile image, BlockDeviceInfo info, uint memoryAlignment, ILogger log)
    {
        Image = image;
        _info = info;
        MemoryAlignment = memoryAlignment;
        Log = log;
        if (!image.ReadOnly) _worker = new ImageMetadataWorker(image, Ranges, WakeParkedChannels, log);
    }

    internal ClusterRangeLocks Ranges { get; } = new();

    /// <summary>The metadata thread; a read-only image never changes metadata (requests fail validation first).</summary>
    internal ImageMetadataWorker Worker => _worker ?? throw new InvalidOperationException($"{Image.Path} is read-only");

    internal void Register(ImageChannel channel)
    {
        lock (_channels) _channels.Add(channel);
    }

    internal void Unregister(ImageChannel channel)
    {
        lock (_channels) _channels.Remove(channel);
    }

    /// <summary>A deallocation ended: wake the reactors of channels whose requests wait for a range (worker thread;
    /// the lock only orders this against channels opening and closing, never a request).</summary>
    private void WakeParkedChannels()
    {
        lock (_channels)
            foreach (var channel in _channels)
                if (channel.HasParked) channel.Context.Wake();
    }

    public ImageFile Image { get; }
    public BlockDeviceInfo Info => _info;
    public uint MemoryAlignment { get; }
    internal ILogger Log { get; }

    public static ImageDisk Open(string path, bool readOnly, uint blockSize, bool directIo, ILogger log)
    {
        if (blockSize is not (512 or 4096)) throw new ArgumentException($"block size must be 512 or 4096, not {blockSize}");
        var image = ImageFile.Open(path, readOnly, directIo);
        try
        {
            if (image.Header.VirtualSize % blockSize != 0)
                throw new IOException($"{path}: virtual size {image.Header.VirtualSize} is not a multiple of the block size {blockSize}");
            var stat = FileNative.StatFd(image.Fd) ?? throw new IOException($"{path}: statx failed");
            (uint memAlign, uint offsetAlign) = FileNative.DirectIoAlignment(image.Fd, stat);
            if (directIo && offsetAlign > blockSize)
                throw new IOException($"{path} needs {offsetAlign}-byte aligned O_DIRECT I/O: use a block size of at least {offsetAlign} or cache=writeback");
            var info = new BlockDeviceInfo(image.Header.VirtualSize, blockSize, readOnly, SupportsDiscard: true, SupportsWriteZeroes: true, HasVolatileCache: true);
            return new ImageDisk(image, info, directIo ? memAlign : 1, log);
        }
        catch
        {
            image.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Grows the image online (<see cref="ImageGrowth"/> on the metadata worker, while the reactors go on): clusters
    /// in the way of the larger map are moved with their I/O held back, then the new header is made durable, and
    /// only then is the new size published.
    /// </summary>
    /// <exception cref="ArgumentException">read-only, not larger, not whole blocks, or a map beyond this build's
    /// limit (use a larger cluster size).</exception>
    /// <exception cref="IOException">the file could not be changed; the image keeps its old size.</exception>
    public void Resize(ulong newSizeBytes)
    {
        lock (_resizeGate)
        {
            var info = _info;
            ResizeRules.CheckGrowth(info, newSizeBytes);
            ImageGrowth.Layout(Image.Header, newSizeBytes);   // refuse before the worker starts on it
            Worker.Grow(newSizeBytes);
            _info = info with { SizeBytes = newSizeBytes };
        }
    }

    public IBlockChannel OpenChannel(IoContext io, IBlockCompletionSink sink, int maxInFlight) => new ImageChannel(this, io, sink, maxInFlight);

    public void Dispose()
    {
        _worker?.Dispose();
        Image.Dispose();
    }
}
