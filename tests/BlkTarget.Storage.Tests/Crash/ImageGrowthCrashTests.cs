using BlkTarget.Storage.Image;
using BlkTarget.Storage.Tests.Concurrency;
using BlkTarget.Storage.Tests.Conformance;
using BlkTarget.Storage.Tests.Image;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit.Abstractions;

namespace BlkTarget.Storage.Tests.Crash;

/// <summary>
/// A growth cut at every step. Every change the growth makes to the file is recorded; then, for every moment between
/// two changes, the file a kill -9 leaves (everything so far) and files a power loss may leave (what completed syncs
/// cover, plus any subset of the rest, torn at 4 KiB) are built. Each must open with the old or the new size, show
/// no corruption in `check`, hold every cluster's data, and grow to the new size cleanly when the resize is run again.
/// While clusters move, a crash can leave a copy (before its entry names it) or an original (after) unreferenced:
/// leaked space, never lost or misplaced data; the next writable open punches it.
/// </summary>
public sealed class ImageGrowthCrashTests(ITestOutputHelper output) : IDisposable
{
    private const uint Cluster = 4096;
    private const ulong OldSize = 1 << 20;    // 256 entries: one map cluster, data from physical cluster 2
    private const ulong NewSize = 64 << 20;   // 16384 entries: 32 map clusters, data from physical cluster 33
    private const int PowerLossesPerStep = 3;
    private readonly string _dir = Directory.CreateDirectory(Path.Combine("/var/tmp", $"blkt-growcrash-{Guid.NewGuid():N}")).FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void A_crash_at_any_step_of_a_growth_leaves_the_old_or_the_new_size_with_every_cluster_intact()
    {
        string path = Path.Combine(_dir, "disk.bti");
        string initial = Path.Combine(_dir, "initial.bti");
        var expected = Populate(path);
        SparseCopy(path, initial);
        Assert.True(ImageChecker.Check(initial).Clean);

        var log = new MediumLog(new StampLedger(1));   // the ledger only serves as the clock
        int moved;
        using (var image = ImageFile.Open(path, readOnly: false, directIo: true))
        {
            image.Recorder = log;
            moved = ImageGrowth.Run(image, NewSize);
        }
        Assert.True(moved > 10, $"only {moved} clusters moved");
        Verify(path, expected, "the finished growth", out bool grown, out _);
        Assert.True(grown);

        var ticks = log.Ticks();
        var random = new Random(1234);
        int images = 0, oldSize = 0, newSize = 0, leaky = 0;
        var moments = new List<long> { 0 };
        moments.AddRange(ticks);
        foreach (long crash in moments)
            for (int attempt = 0; attempt <= PowerLossesPerStep; attempt++)
            {
                bool killed = attempt == 0;
                string crashed = Path.Combine(_dir, "crashed.bti");
                SparseCopy(initial, crashed);
                log.BuildCrashImage(crashed, crash, random, processKilled: killed);
                string what = $"{(killed ? "kill -9" : "power loss")} after change {moments.IndexOf(crash)} of {ticks.Count}";
                Verify(crashed, expected, what, out bool isNew, out bool leaked);
                images++;
                Assert.False(isNew && leaked, $"{what}: the grown image has leaked clusters");
                if (isNew) newSize++;
                else oldSize++;
                if (leaked) leaky++;
                if (!isNew)
                {
                    // Running the resize again finishes the job.
                    using (var image = ImageFile.Open(crashed, readOnly: false, directIo: false))
                        ImageGrowth.Run(image, NewSize);
                    Verify(crashed, expected, what + ", resized again", out bool regrown, out bool leakedAgain);
                    Assert.True(regrown && !leakedAgain, $"{what}: the second resize left {(regrown ? "leaked space" : "the old size")}");
                }
            }
        output.WriteLine($"{moved} clusters moved, {ticks.Count} recorded changes, {images} crash images " +
            $"({moments.Count} kill -9, the rest power losses): {oldSize} with the old size, {newSize} with the new; " +
            $"{leaky} with leaked clusters only (cleared by the next writable open)");
        Assert.True(oldSize > 0 && newSize > 0);
    }

    /// <summary>Copies a file keeping its holes (File.Copy fills them, and `check` would count every zero cluster
    /// as leaked data).</summary>
    private static void SparseCopy(string from, string to)
    {
        var bytes = File.ReadAllBytes(from);
        using var file = new FileStream(to, FileMode.Create, FileAccess.Write);
        file.SetLength(bytes.Length);
        for (int offset = 0; offset < bytes.Length; offset += 4096)
        {
            var block = bytes.AsSpan(offset, Math.Min(4096, bytes.Length - offset));
            if (!block.ContainsAnyExcept((byte)0)) continue;
            file.Position = offset;
            file.Write(block);
        }
    }

    /// <summary>Writes most virtual clusters in a shuffled order (so the clusters in the way belong to scattered
    /// virtual clusters), discards a few (holes and free clusters inside the future map area), flushes.</summary>
    private static byte[] Populate(string path)
    {
        ImageFile.Create(path, OldSize, Cluster);
        var expected = new byte[OldSize];
        var random = new Random(99);
        var order = Enumerable.Range(0, (int)(OldSize / Cluster)).OrderBy(_ => random.Next()).ToList();
        using var disk = ImageDisk.Open(path, readOnly: false, 512, directIo: true, NullLogger.Instance);
        using var driver = new ChannelDriver(disk);
        foreach (int v in order.Take(220))
        {
            var data = ImageTestFiles.Pattern((int)Cluster, v + 1);
            if (v % 7 == 0) data.AsSpan(1024, 2048).Clear();   // a cluster with a hole inside
            Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, (ulong)v * Cluster, data));
            data.CopyTo(expected, v * (int)Cluster);
        }
        foreach (int v in order.Take(12))
        {
            Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.Discard, (ulong)v * Cluster, Cluster));
            expected.AsSpan(v * (int)Cluster, (int)Cluster).Clear();
        }
        Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.Flush, 0, 0));
        return expected;
    }

    /// <summary>The image opens with the old or the new size, check finds no corruption (leaked clusters, the
    /// copies or originals a crash left unreferenced, are allowed and a writable open clears them), and every cluster
    /// holds its data; the grown part reads as zeros.</summary>
    private static void Verify(string path, byte[] expected, string what, out bool grown, out bool leaked)
    {
        var check = ImageChecker.Check(path);
        Assert.False(check.HasCorruption, $"{what}: {string.Join("; ", check.Remaining.Select(p => p.Message))}");
        Assert.True(check.Remaining.All(p => p.Kind == ImageProblemKind.LeakedClusters), $"{what}: {string.Join("; ", check.Remaining.Select(p => p.Message))}");
        leaked = !check.Clean;
        ulong size = check.Header.VirtualSize;
        Assert.True(size is OldSize or NewSize, $"{what}: virtual size {size}");
        grown = size == NewSize;
        using (var disk = ImageDisk.Open(path, readOnly: true, 512, directIo: false, NullLogger.Instance))
        using (var driver = new ChannelDriver(disk))
        {
            var contents = new byte[OldSize];
            Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, 0, contents));
            int first = contents.AsSpan().CommonPrefixLength(expected);
            Assert.True(first == contents.Length, $"{what}: virtual byte {first} (cluster {first / Cluster}) differs");
            if (grown)
            {
                var tail = new byte[1 << 20];
                Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, NewSize - (1 << 20), tail));
                Assert.False(tail.AsSpan().ContainsAnyExcept((byte)0), $"{what}: the grown part is not zeros");
            }
        }
        if (!leaked) return;
        using (ImageFile.Open(path, readOnly: false, directIo: false)) { }   // punches unreferenced clusters
        Assert.True(ImageChecker.Check(path).Clean, $"{what}: leaked clusters survived a writable open");
    }
}
