using BlkTarget.Storage.Interop;
using Microsoft.Extensions.Logging;

namespace BlkTarget.Storage.Image;

/// <summary>
/// A thin-provisioned BlkTarget image exported as a disk. Allocated clusters are read and written through
/// the reactors' io_uring straight into guest memory, like a raw file; unallocated clusters read as zeros
/// without I/O; the first write to a cluster allocates it (<see cref="ImageFile"/> keeps that crash-safe).
/// </summary>
public sealed class ImageDisk : IBlockDevice
{
    private ImageDisk(ImageFile image, BlockDeviceInfo info, uint memoryAlignment, ILogger log)
    {
        Image = image;
        Info = info;
        MemoryAlignment = memoryAlignment;
        Log = log;
    }

    public ImageFile Image { get; }
    public BlockDeviceInfo Info { get; }
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

    public IBlockChannel OpenChannel(IoContext io, IBlockCompletionSink sink, int maxInFlight) => new ImageChannel(this, io, sink, maxInFlight);

    public void Dispose() => Image.Dispose();
}
