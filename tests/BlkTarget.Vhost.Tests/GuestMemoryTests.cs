namespace BlkTarget.Vhost.Tests;

public unsafe class GuestMemoryTests
{
    [Fact]
    public void Translates_guest_physical_addresses_inside_a_region()
    {
        using var t = new TestMemory();
        var region = t.AddRegion(0x10000, 0x4000);
        Assert.True(t.Memory.TryTranslateGuest(0x10010, 16, out byte* host, out ulong contiguous));
        Assert.Equal((nint)(region.Host + 0x10), (nint)host);
        Assert.Equal(16UL, contiguous);
    }

    [Fact]
    public void Refuses_addresses_outside_every_region()
    {
        using var t = new TestMemory();
        t.AddRegion(0x10000, 0x4000);
        Assert.False(t.Memory.TryTranslateGuest(0xFFFF, 1, out _, out _));
        Assert.False(t.Memory.TryTranslateGuest(0x14000, 1, out _, out _));
        Assert.True(t.Memory.TranslateGuestRange(0x13FFF, 2) == null);
        Assert.True(t.Memory.TranslateGuestRange(0x13FFF, 1) != null);
    }

    [Fact]
    public void Range_checks_do_not_overflow_near_the_top_of_the_address_space()
    {
        using var t = new TestMemory();
        t.AddRegion(0x10000, 0x4000);
        Assert.True(t.Memory.TranslateGuestRange(0x10000, ulong.MaxValue) == null);
        Assert.True(t.Memory.TranslateGuestRange(ulong.MaxValue - 4, 16) == null);
        Assert.True(t.Memory.TranslateUserRange(ulong.MaxValue, 2) == null);
    }

    [Fact]
    public void A_buffer_crossing_into_the_next_region_is_reported_as_shorter_contiguous_piece()
    {
        using var t = new TestMemory();
        t.AddRegion(0x10000, 0x1000);
        var second = t.AddRegion(0x11000, 0x1000);
        Assert.True(t.Memory.TryTranslateGuest(0x10F00, 0x200, out _, out ulong contiguous));
        Assert.Equal(0x100UL, contiguous);
        Assert.True(t.Memory.TryTranslateGuest(0x11000, 0x100, out byte* host, out _));
        Assert.Equal((nint)second.Host, (nint)host);
    }

    [Fact]
    public void Frontend_virtual_addresses_translate_through_userspace_addr()
    {
        using var t = new TestMemory();
        var region = t.AddRegion(0x0, 0x2000, userAddr: 0x5555_0000_0000);
        Assert.Equal((nint)(region.Host + 0x100), (nint)t.Memory.TranslateUserRange(0x5555_0000_0100, 0x10));
        Assert.True(t.Memory.TranslateUserRange(0x100, 0x10) == null);
    }

    [Fact]
    public void Mmap_offset_is_applied()
    {
        using var t = new TestMemory();
        var region = t.AddRegion(0x0, 0x1000, mmapOffset: 0x2000);
        region.Host[0] = 0xAB;
        Assert.Equal(0xAB, t.At(0)[0]);
    }

    [Fact]
    public void A_region_that_wraps_the_address_space_is_refused()
    {
        using var fd = Storage.Interop.MemFd.Create("t", 4096);
        Assert.Throws<ArgumentException>(() => Memory.GuestRegion.Map(new Protocol.MemoryRegionDescription(ulong.MaxValue - 10, 4096, 0, 0), fd));
        Assert.Throws<ArgumentException>(() => Memory.GuestRegion.Map(new Protocol.MemoryRegionDescription(0, 0, 0, 0), fd));
    }
}
