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
    /// <summary>Largest address-space reservation a RAM disk makes for growing (bytes): 4 TiB. A disk can grow to
    /// 64 times its size at creation, at most this (or its own size when larger).</summary>
    public const ulong MaxGrowthReservation = 4UL << 40;

    private readonly MappedMemory _memory;
    private readonly RamDiskWarmer? _warmer;
    private readonly object _resizeGate = new();
    private volatile BlockDeviceInfo _info;

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
            : MappedMemory.MapAnonymous(sizeBytes, transparentHugePages: pages == RamDiskPages.Transparent, GrowthLimit(sizeBytes));
        _info = new BlockDeviceInfo(sizeBytes, blockSize, readOnly, SupportsDiscard: true, SupportsWriteZeroes: true, HasVolatileCache: false);
        // Huge pages are expensive to fault in from inside a request; 4 KiB pages are not (and stay thin), and
        // hugetlb pages were reserved up front.
        if (pages == RamDiskPages.Transparent && !readOnly) _warmer = new RamDiskWarmer(_memory, sizeBytes, $"{sizeBytes >> 20}M");
    }

    /// <summary>True when the memory is faulted in (transparent huge pages: done in the background after creation;
    /// other kinds: always).</summary>
    public bool Warm => _warmer?.Done ?? true;

    public BlockDeviceInfo Info => _info;
    public RamDiskPages Pages { get; }

    /// <summary>The size this disk can grow to (bytes): its reserved address space.</summary>
    public ulong MaxSizeBytes => Pages == RamDiskPages.Hugetlb ? _info.SizeBytes : _memory.Length;

    private static ulong GrowthLimit(ulong sizeBytes) =>
        Math.Max(sizeBytes, sizeBytes > MaxGrowthReservation / 64 ? MaxGrowthReservation : sizeBytes * 64);

    /// <summary>Grows the disk to <paramref name="newSizeBytes"/> (within <see cref="MaxSizeBytes"/>); the new space
    /// reads as zeros and costs memory only once written. Channels see the new size from their next request on.
    /// A hugetlb RAM disk keeps its size (its pages were reserved at creation).</summary>
    /// <exception cref="ArgumentException">not larger than now, not a multiple of the block size, or past the limit.</exception>
    /// <exception cref="NotSupportedException">a hugetlb RAM disk.</exception>
    public void Resize(ulong newSizeBytes)
    {
        lock (_resizeGate)
        {
            var info = _info;
            ResizeRules.CheckGrowth(info, newSizeBytes);
            if (Pages == RamDiskPages.Hugetlb) throw new NotSupportedException("a RAM disk in hugetlb pages keeps its size (its pages are reserved at creation)");
            if (newSizeBytes > _memory.Length)
                throw new ArgumentException($"this RAM disk can grow to at most {_memory.Length} bytes (64 times its size at creation, the address space it reserved)");
            _memory.Grow(newSizeBytes);       // the medium first: a request checked against the new size finds it
            _info = info with { SizeBytes = newSizeBytes };
            _warmer?.Extend(newSizeBytes);
        }
    }

    internal MappedMemory Memory => _memory;

    public IBlockChannel OpenChannel(IoContext io, IBlockCompletionSink sink, int maxInFlight) => new RamDiskChannel(this, sink);

    public void Dispose()
    {
        _warmer?.Dispose();     // first: it must not fault in a range that is being unmapped
        _memory.Dispose();
    }
}
