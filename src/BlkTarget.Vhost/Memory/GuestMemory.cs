namespace BlkTarget.Vhost.Memory;

/// <summary>
/// An immutable snapshot of the guest's memory map: translates guest-physical addresses (descriptor buffers)
/// and frontend-virtual addresses (ring addresses from SET_VRING_ADDR) to pointers in this process, with
/// overflow-safe bounds checks. The session swaps snapshots only while the queues using it are stopped.
/// </summary>
public sealed unsafe class GuestMemory
{
    private readonly GuestRegion[] _regions;

    public GuestMemory(IEnumerable<GuestRegion> regions) => _regions = regions.ToArray();

    public static GuestMemory Empty { get; } = new([]);

    public int RegionCount => _regions.Length;

    public IReadOnlyList<GuestRegion> Regions => _regions;

    /// <summary>
    /// Translates the start of a guest-physical buffer. <paramref name="contiguous"/> receives how many of the
    /// <paramref name="length"/> bytes are contiguous in this process (less than length when the buffer continues
    /// in the next region; the caller translates the remainder separately). False when <paramref name="gpa"/> is
    /// outside every region.
    /// </summary>
    public bool TryTranslateGuest(ulong gpa, ulong length, out byte* host, out ulong contiguous)
    {
        foreach (var region in _regions)
        {
            ulong offset = gpa - region.GuestPhysAddr;
            if (gpa >= region.GuestPhysAddr && offset < region.Size)
            {
                host = region.Host + offset;
                ulong left = region.Size - offset;
                contiguous = length < left ? length : left;
                return true;
            }
        }
        host = null;
        contiguous = 0;
        return false;
    }

    /// <summary>
    /// The reverse of <see cref="TryTranslateGuest"/>: the guest-physical address of a pointer into one of the mapped
    /// regions (a segment a descriptor chain was walked into). <paramref name="contiguous"/> receives how many of the
    /// <paramref name="length"/> bytes lie in that region. False when <paramref name="host"/> is in no region.
    /// </summary>
    public bool TryHostToGuest(byte* host, ulong length, out ulong gpa, out ulong contiguous)
    {
        foreach (var region in _regions)
        {
            ulong offset = (ulong)host - (ulong)region.Host;
            if (host >= region.Host && offset < region.Size)
            {
                gpa = region.GuestPhysAddr + offset;
                ulong left = region.Size - offset;
                contiguous = length < left ? length : left;
                return true;
            }
        }
        gpa = 0;
        contiguous = 0;
        return false;
    }

    /// <summary>The guest-physical address of frontend virtual address <paramref name="uva"/> (SET_VRING_ADDR's ring
    /// addresses); false when no region holds it.</summary>
    public bool TryUserToGuest(ulong uva, out ulong gpa)
    {
        foreach (var region in _regions)
            if (GuestRegion.Contains(region.UserAddr, region.Size, uva, 1))
            {
                gpa = region.GuestPhysAddr + (uva - region.UserAddr);
                return true;
            }
        gpa = 0;
        return false;
    }

    /// <summary>Translates a whole guest-physical range that must lie in a single region (rings, headers).</summary>
    public byte* TranslateGuestRange(ulong gpa, ulong length)
    {
        foreach (var region in _regions)
            if (GuestRegion.Contains(region.GuestPhysAddr, region.Size, gpa, length))
                return region.Host + (gpa - region.GuestPhysAddr);
        return null;
    }

    /// <summary>Translates a frontend virtual address range (SET_VRING_ADDR); null when not wholly inside one region.</summary>
    public byte* TranslateUserRange(ulong uva, ulong length)
    {
        foreach (var region in _regions)
            if (GuestRegion.Contains(region.UserAddr, region.Size, uva, length))
                return region.Host + (uva - region.UserAddr);
        return null;
    }
}
