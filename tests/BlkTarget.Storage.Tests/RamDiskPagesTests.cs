using System.Globalization;
using BlkTarget.Storage.Interop;
using BlkTarget.Storage.Ram;
using BlkTarget.Storage.Tests.Conformance;

namespace BlkTarget.Storage.Tests;

/// <summary>
/// The RAM disk's memory: transparent huge pages advised on a 2 MiB-aligned mapping by default, hugetlb pages
/// from the reserved pool with hugepages=on (refused in one line when the pool is too small), and discard giving
/// whole huge pages back while zeroing partial ones.
/// </summary>
public sealed unsafe class RamDiskPagesTests
{
    private const ulong Huge = 2UL << 20;

    /// <summary>The smaps block of the mapping that starts at <paramref name="address"/>.</summary>
    private static string[] Smaps(nint address)
    {
        var lines = File.ReadAllLines("/proc/self/smaps");
        string start = ((ulong)address).ToString("x", CultureInfo.InvariantCulture) + "-";
        int i = Array.FindIndex(lines, l => l.StartsWith(start, StringComparison.Ordinal));
        Assert.True(i >= 0, $"no mapping at {start} in /proc/self/smaps");
        int end = Array.FindIndex(lines, i + 1, l => char.IsAsciiHexDigit(l[0]) && l.Contains('-') && !l.Contains(':'));
        return lines[i..(end < 0 ? lines.Length : end)];
    }

    private static ulong Kb(string[] smaps, string field) =>
        ulong.Parse(smaps.First(l => l.StartsWith(field + ":", StringComparison.Ordinal)).Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);

    [Fact]
    public void By_default_the_medium_is_2MiB_aligned_and_advised_for_transparent_huge_pages()
    {
        using var disk = new RamDisk(64UL << 20);
        Assert.Equal(RamDiskPages.Transparent, disk.Pages);
        nint address = (nint)disk.Memory.Pointer;
        Assert.Equal(0UL, (ulong)address % Huge);
        string flags = Smaps(address).First(l => l.StartsWith("VmFlags:", StringComparison.Ordinal));
        Assert.Contains(" hg", flags);   // MADV_HUGEPAGE
    }

    [Fact]
    public void A_transparent_huge_page_disk_is_faulted_in_ahead_of_the_guest_and_keeps_what_was_written()
    {
        using var disk = new RamDisk(128UL << 20);
        using var driver = new ChannelDriver(disk);
        var data = new byte[1 << 20];
        Array.Fill(data, (byte)0xC3);
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, 64 << 20, data));   // races with the warmer: harmless
        Assert.True(SpinWait.SpinUntil(() => disk.Warm, TimeSpan.FromSeconds(30)), "the RAM disk was not faulted in within 30 s");
        ulong rss = Kb(Smaps((nint)disk.Memory.Pointer), "Rss");
        Assert.True(rss >= 128 * 1024, $"RSS {rss} KiB: not all of the 128 MiB was faulted in");
        var back = new byte[1 << 20];
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, 64 << 20, back));
        Assert.Equal(data, back);
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, 0, back));
        Assert.True(back.AsSpan().IndexOfAnyExcept((byte)0) < 0, "warming changed the contents");
    }

    [Fact]
    public void Small_pages_stay_thin()
    {
        using var disk = new RamDisk(64UL << 20, pages: RamDiskPages.Small);
        Assert.True(disk.Warm);
        Thread.Sleep(200);
        Assert.True(Kb(Smaps((nint)disk.Memory.Pointer), "Rss") < 1024);
    }

    [Fact]
    public void Small_pages_on_request_get_no_advice()
    {
        using var disk = new RamDisk(8UL << 20, pages: RamDiskPages.Small);
        string flags = Smaps((nint)disk.Memory.Pointer).First(l => l.StartsWith("VmFlags:", StringComparison.Ordinal));
        Assert.DoesNotContain(" hg", flags);
    }

    [Theory]
    [InlineData(RamDiskPages.Transparent)]
    [InlineData(RamDiskPages.Small)]
    public void Discard_gives_whole_pages_back_and_zeroes_partial_ones(RamDiskPages pages)
    {
        using var disk = new RamDisk(16UL << 20, pages: pages);
        Assert.True(SpinWait.SpinUntil(() => disk.Warm, TimeSpan.FromSeconds(30)));   // the warmer must not refill what is discarded below
        using var driver = new ChannelDriver(disk);
        var data = new byte[8 << 20];
        Array.Fill(data, (byte)0x5A);
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, 0, data));
        ulong before = Kb(Smaps((nint)disk.Memory.Pointer), "Rss");
        // 1 MiB into the first huge page through the end of the third: two whole huge pages, half of the first.
        Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.Discard, 1 << 20, 5UL << 20));
        ulong after = Kb(Smaps((nint)disk.Memory.Pointer), "Rss");
        Assert.True(before - after >= 4096, $"RSS went from {before} to {after} KiB: the two whole huge pages were not given back");
        var back = new byte[8 << 20];
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, 0, back));
        Assert.All(back.AsSpan(0, 1 << 20).ToArray(), b => Assert.Equal(0x5A, b));
        Assert.True(back.AsSpan(1 << 20, 5 << 20).IndexOfAnyExcept((byte)0) < 0, "the discarded range does not read as zeros");
        Assert.All(back.AsSpan(6 << 20).ToArray(), b => Assert.Equal(0x5A, b));
    }

    /// <summary>Reserves <paramref name="pages"/> more hugetlb pages for the test and gives them back afterwards.</summary>
    private sealed class HugePagePool : IDisposable
    {
        private const string Knob = "/proc/sys/vm/nr_hugepages";
        private readonly string _previous = File.ReadAllText(Knob).Trim();

        public HugePagePool(int pages)
        {
            File.WriteAllText(Knob, (ulong.Parse(_previous, CultureInfo.InvariantCulture) + (ulong)pages).ToString(CultureInfo.InvariantCulture));
            Assert.True(MappedMemory.FreeHugePages() >= (ulong)pages, $"could not reserve {pages} huge pages (root and free memory are needed)");
        }

        public void Dispose() => File.WriteAllText(Knob, _previous);
    }

    [Fact]
    public void Hugetlb_pages_serve_io_and_discard_returns_them_to_the_pool()
    {
        using var pool = new HugePagePool(8);
        ulong freeBefore = MappedMemory.FreeHugePages();
        using (var disk = new RamDisk(16UL << 20, pages: RamDiskPages.Hugetlb))
        {
            Assert.Equal(freeBefore, MappedMemory.FreeHugePages() + 0);   // reserved, not yet faulted in
            using var driver = new ChannelDriver(disk);
            var data = new byte[16 << 20];
            new Random(3).NextBytes(data);
            Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, 0, data));
            Assert.Equal(freeBefore - 8, MappedMemory.FreeHugePages());
            Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.Discard, 4UL << 20, 8UL << 20));
            Assert.Equal(freeBefore - 4, MappedMemory.FreeHugePages());
            var back = new byte[16 << 20];
            Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, 0, back));
            Assert.Equal(data.AsSpan(0, 4 << 20).ToArray(), back[..(4 << 20)]);
            Assert.True(back.AsSpan(4 << 20, 8 << 20).IndexOfAnyExcept((byte)0) < 0);
            Assert.Equal(data.AsSpan(12 << 20).ToArray(), back[(12 << 20)..]);
        }
        Assert.Equal(freeBefore, MappedMemory.FreeHugePages());
    }

    [Fact]
    public void Hugetlb_without_enough_reserved_pages_is_refused_in_one_line()
    {
        var error = Assert.Throws<IOException>(() => new RamDisk(1UL << 40, pages: RamDiskPages.Hugetlb));
        Assert.Contains("huge pages of 2 MiB are needed", error.Message);
        Assert.DoesNotContain('\n', error.Message);
    }
}
