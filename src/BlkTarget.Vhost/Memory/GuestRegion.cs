using BlkTarget.Storage.Interop;
using BlkTarget.Vhost.Protocol;

namespace BlkTarget.Vhost.Memory;

/// <summary>
/// One guest memory region mapped into this process. Owns its mapping; disposing it unmaps the region, which
/// the session only does once no queue can still use it.
/// </summary>
public sealed unsafe class GuestRegion : IDisposable
{
    private readonly MappedMemory _mapping;

    private GuestRegion(MemoryRegionDescription description, MappedMemory mapping)
    {
        Description = description;
        _mapping = mapping;
        Host = mapping.Pointer + description.MmapOffset;
    }

    public MemoryRegionDescription Description { get; }
    public ulong GuestPhysAddr => Description.GuestPhysAddr;
    public ulong UserAddr => Description.UserAddr;
    public ulong Size => Description.Size;
    /// <summary>Where guest-physical address <see cref="GuestPhysAddr"/> lives in this process.</summary>
    public byte* Host { get; }

    /// <summary>
    /// Maps a region the frontend described. The whole fd range [0, mmap_offset + size) is mapped so the offset
    /// needs no alignment (hugetlbfs refuses unaligned offsets). Validates the description first: a region that
    /// wraps the 64-bit address space in either address space is refused.
    /// </summary>
    public static GuestRegion Map(MemoryRegionDescription description, OwnedFd fd)
    {
        if (description.Size == 0) throw new ArgumentException("memory region of size 0");
        if (description.GuestPhysAddr + description.Size < description.GuestPhysAddr ||
            description.UserAddr + description.Size < description.UserAddr ||
            description.MmapOffset + description.Size < description.MmapOffset)
            throw new ArgumentException("memory region wraps the address space");
        var mapping = MappedMemory.MapShared(fd.Fd, description.MmapOffset + description.Size);
        return new GuestRegion(description, mapping);
    }

    /// <summary>True when [addr, addr+len) lies inside [start, start+size); overflow-safe.</summary>
    internal static bool Contains(ulong start, ulong size, ulong addr, ulong len) =>
        addr >= start && addr - start < size && len <= size - (addr - start);

    public void Dispose() => _mapping.Dispose();
}
