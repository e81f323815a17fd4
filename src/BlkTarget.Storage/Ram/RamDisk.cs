using BlkTarget.Storage.Interop;

namespace BlkTarget.Storage.Ram;

/// <summary>
/// A block device in this process's memory. Sizes above 2 GiB work (the medium is one anonymous mapping),
/// and untouched or discarded space costs no memory.
/// </summary>
public sealed class RamDisk : IBlockDevice
{
    private readonly MappedMemory _memory;

    public RamDisk(ulong sizeBytes, uint blockSize = 512, bool readOnly = false)
    {
        if (blockSize is not (512 or 4096)) throw new ArgumentException($"block size must be 512 or 4096, not {blockSize}");
        if (sizeBytes == 0 || sizeBytes % blockSize != 0)
            throw new ArgumentException($"RAM disk size {sizeBytes} must be a positive multiple of the block size {blockSize}");
        _memory = MappedMemory.MapAnonymous(sizeBytes);
        Info = new BlockDeviceInfo(sizeBytes, blockSize, readOnly, SupportsDiscard: true, SupportsWriteZeroes: true, HasVolatileCache: false);
    }

    public BlockDeviceInfo Info { get; }

    internal MappedMemory Memory => _memory;

    public IBlockChannel OpenChannel(IoContext io, IBlockCompletionSink sink, int maxInFlight) => new RamDiskChannel(this, sink);

    public void Dispose() => _memory.Dispose();
}
