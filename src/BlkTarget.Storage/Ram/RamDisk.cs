using BlkTarget.Storage.Interop;

namespace BlkTarget.Storage.Ram;

/// <summary>What memory a RAM disk lives in.</summary>
public enum RamDiskPages
{
    /// <summary>4 KiB pages, no advice.</summary>
    Small,
    /// <summary>Anonymous memory advised MADV_HUGEPAGE (2 MiB-aligned): huge pages where the kernel can (the default).</summary>
    Transparent,
    /// <summary>hugetlb pages from the reserved pool (/proc/sys/vm/nr_hugepages), reserved when the disk is created.</summary>
    Hugetlb,
}

/// <summary>
/// A block device in this process's memory. Sizes above 2 GiB work (the medium is one mapping), and untouched or
/// discarded space costs no memory (with huge pages: discarded whole huge pages; partial ones are zeroed). Huge
/// pages by default: random 4 KiB copies then miss the TLB far less (SPDK's Malloc disk lives in 2 MiB pages too).
/// </summary>
public sealed class RamDisk : IBlockDevice
{
    private readonly MappedMemory _memory;

    /// <exception cref="ArgumentException">block size not 512/4096, or size not a positive multiple of it.</exception>
    /// <exception cref="IOException">the memory cannot be had (e.g. not enough free hugetlb pages: one line saying so).</exception>
    public RamDisk(ulong sizeBytes, uint blockSize = 512, bool readOnly = false, RamDiskPages pages = RamDiskPages.Transparent)
    {
        if (blockSize is not (512 or 4096)) throw new ArgumentException($"block size must be 512 or 4096, not {blockSize}");
        if (sizeBytes == 0 || sizeBytes % blockSize != 0)
            throw new ArgumentException($"RAM disk size {sizeBytes} must be a positive multiple of the block size {blockSize}");
        Pages = pages;
        _memory = pages == RamDiskPages.Hugetlb
            ? MappedMemory.MapHugetlb(sizeBytes, "blktarget-ram")
            : MappedMemory.MapAnonymous(sizeBytes, transparentHugePages: pages == RamDiskPages.Transparent);
        Info = new BlockDeviceInfo(sizeBytes, blockSize, readOnly, SupportsDiscard: true, SupportsWriteZeroes: true, HasVolatileCache: false);
    }

    public BlockDeviceInfo Info { get; }
    public RamDiskPages Pages { get; }

    internal MappedMemory Memory => _memory;

    public IBlockChannel OpenChannel(IoContext io, IBlockCompletionSink sink, int maxInFlight) => new RamDiskChannel(this, sink);

    public void Dispose() => _memory.Dispose();
}
