using BlkTarget.Storage.Interop;
using BlkTarget.Vhost.Protocol;

namespace BlkTarget.Vhost.Frontend;

/// <summary>
/// The frontend's "guest RAM": one memfd mapped shared into this process, handed to the backend with
/// SET_MEM_TABLE, and carved up by a bump allocator into rings, request headers and data buffers.
/// <para>
/// Addresses work the way QEMU's do: guest-physical address = <see cref="GuestPhysBase"/> + offset (a base far
/// from zero, so a backend that confuses address spaces fails loudly), frontend-virtual address = the real
/// pointer in this process. The memory can be described as several adjacent regions of equal size (the same fd
/// at different mmap offsets), so buffers that cross a region boundary can be exercised.
/// </para>
/// Allocation is for setup time (it takes a lock); nothing is ever freed until the arena is disposed.
/// </summary>
public sealed unsafe class GuestMemoryArena : IDisposable
{
    public const ulong DefaultGuestPhysBase = 0x1_0000_0000;
    public const ulong PageSize = 4096;

    private readonly OwnedFd _memfd;
    private readonly MappedMemory _mapping;
    private readonly MemoryRegionDescription[] _regions;
    private readonly Lock _lock = new();
    private ulong _next;

    /// <param name="size">Bytes of guest RAM (rounded up to whole pages per region).</param>
    /// <param name="regionCount">How many adjacent memory regions to describe it as (1..8).</param>
    /// <param name="guestPhysBase">Guest-physical address of the first byte.</param>
    /// <param name="hugePages">Back it with 2 MiB hugetlb pages (QEMU's memory-backend-memfd,hugetlb=on); regions
    /// are then whole huge pages.</param>
    /// <exception cref="IOException">memory cannot be had; with huge pages, one line saying how many are needed.</exception>
    public GuestMemoryArena(ulong size, int regionCount = 1, ulong guestPhysBase = DefaultGuestPhysBase, string name = "blktarget-guest-ram",
        bool hugePages = false)
    {
        if (size == 0) throw new ArgumentOutOfRangeException(nameof(size));
        if (regionCount is < 1 or > MemoryTablePayload.MaxRegions) throw new ArgumentOutOfRangeException(nameof(regionCount));
        ulong page = hugePages ? MappedMemory.HugePageSize : PageSize;
        ulong regionSize = (size + (ulong)regionCount - 1) / (ulong)regionCount;
        regionSize = (regionSize + page - 1) & ~(page - 1);
        Size = regionSize * (ulong)regionCount;
        GuestPhysBase = guestPhysBase;
        if (hugePages && MappedMemory.FreeHugePages() < Size / page)
            throw new IOException($"--hugepages: {Size / page} huge pages of 2 MiB are needed, {MappedMemory.FreeHugePages()} are free (reserve more: echo N > /proc/sys/vm/nr_hugepages)");
        _memfd = MemFd.Create(name, checked((long)Size), hugePages);
        try
        {
            _mapping = MappedMemory.MapShared(_memfd.Fd, Size);
        }
        catch
        {
            _memfd.Dispose();
            throw;
        }
        _regions = new MemoryRegionDescription[regionCount];
        for (int i = 0; i < regionCount; i++)
        {
            ulong offset = regionSize * (ulong)i;
            _regions[i] = new MemoryRegionDescription(guestPhysBase + offset, regionSize, (ulong)_mapping.Pointer + offset, offset);
        }
    }

    public ulong Size { get; }
    public ulong GuestPhysBase { get; }
    public byte* BasePointer => _mapping.Pointer;

    /// <summary>The memfd; send it with every region (the backend gets a descriptor per region).</summary>
    public OwnedFd MemoryFd => _memfd;

    /// <summary>How the memory is described to the backend (SET_MEM_TABLE / ADD_MEM_REG).</summary>
    public ReadOnlySpan<MemoryRegionDescription> Regions => _regions;

    public ulong Allocated
    {
        get { lock (_lock) return _next; }
    }

    public ulong Available => Size - Allocated;

    /// <summary>Hands out <paramref name="length"/> zeroed-at-creation bytes aligned to <paramref name="alignment"/>
    /// (a power of two). Throws when the arena is full.</summary>
    public GuestBuffer Allocate(uint length, uint alignment = 64)
    {
        if (alignment == 0 || (alignment & (alignment - 1)) != 0) throw new ArgumentException("alignment must be a power of two", nameof(alignment));
        lock (_lock)
        {
            ulong start = (_next + alignment - 1) & ~((ulong)alignment - 1);
            if (start > Size || length > Size - start)
                throw new InvalidOperationException($"guest memory arena of {Size} bytes cannot fit {length} more bytes (used {_next})");
            _next = start + length;
            return new GuestBuffer(_mapping.Pointer + start, GuestPhysBase + start, length);
        }
    }

    /// <summary>A buffer at an exact offset (for tests that place data across a region boundary); not tracked by
    /// the allocator, so the caller must know the range is otherwise unused.</summary>
    public GuestBuffer At(ulong offset, uint length)
    {
        if (offset > Size || length > Size - offset) throw new ArgumentOutOfRangeException(nameof(offset));
        return new GuestBuffer(_mapping.Pointer + offset, GuestPhysBase + offset, length);
    }

    /// <summary>Whether a guest-physical range lies inside this arena (overflow-safe).</summary>
    public bool Contains(ulong gpa, ulong length) =>
        gpa >= GuestPhysBase && gpa - GuestPhysBase <= Size && length <= Size - (gpa - GuestPhysBase);

    /// <summary>The pointer of a guest-physical address inside the arena.</summary>
    public byte* PointerOf(ulong gpa)
    {
        if (!Contains(gpa, 1)) throw new ArgumentOutOfRangeException(nameof(gpa));
        return _mapping.Pointer + (gpa - GuestPhysBase);
    }

    public void Dispose()
    {
        _mapping.Dispose();
        _memfd.Dispose();
    }
}
