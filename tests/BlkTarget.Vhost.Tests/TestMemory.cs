using BlkTarget.Storage.Interop;
using BlkTarget.Vhost.Memory;
using BlkTarget.Vhost.Protocol;

namespace BlkTarget.Vhost.Tests;

/// <summary>Guest memory for unit tests: memfd-backed regions mapped the way the session maps them.</summary>
internal sealed unsafe class TestMemory : IDisposable
{
    private readonly List<GuestRegion> _regions = [];

    /// <summary>Adds a region of <paramref name="size"/> bytes at guest-physical <paramref name="gpa"/>;
    /// its frontend-virtual address is <paramref name="userAddr"/>.</summary>
    public GuestRegion AddRegion(ulong gpa, ulong size, ulong userAddr = 0x7f00_0000_0000, ulong mmapOffset = 0)
    {
        using var fd = MemFd.Create("test-guest", (long)(size + mmapOffset));
        var region = GuestRegion.Map(new MemoryRegionDescription(gpa, size, userAddr == 0x7f00_0000_0000 ? userAddr + gpa : userAddr, mmapOffset), fd);
        _regions.Add(region);
        return region;
    }

    public GuestMemory Memory => new(_regions);

    /// <summary>Host pointer of a guest-physical address (test side, no checks).</summary>
    public byte* At(ulong gpa)
    {
        foreach (var r in _regions)
            if (gpa >= r.GuestPhysAddr && gpa < r.GuestPhysAddr + r.Size) return r.Host + (gpa - r.GuestPhysAddr);
        throw new ArgumentOutOfRangeException(nameof(gpa));
    }

    public void Dispose()
    {
        foreach (var r in _regions) r.Dispose();
    }
}
