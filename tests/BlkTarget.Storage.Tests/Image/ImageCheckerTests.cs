using BlkTarget.Storage.Image;

namespace BlkTarget.Storage.Tests.Image;

/// <summary>check finds every kind of damage without writing; check --repair fixes it conservatively.</summary>
public sealed class ImageCheckerTests : IDisposable
{
    private const uint Cluster = 64 << 10;
    private const ulong Size = 16 << 20;
    private readonly ImageTestFiles _files = new();

    /// <summary>An image with virtual clusters 0, 1, 2 and 5 allocated (in that physical order).</summary>
    private string Populated(string name) => _files.Image(name, Size, Cluster,
        (0, ImageTestFiles.Pattern(3 * (int)Cluster, 1)), (5 * Cluster, ImageTestFiles.Pattern((int)Cluster, 2)));

    private static ImageCheckResult CheckUnchanged(string path)
    {
        var before = File.ReadAllBytes(path);
        var modified = File.GetLastWriteTimeUtc(path);
        var result = ImageChecker.Check(path);
        Assert.Equal(before, File.ReadAllBytes(path));
        Assert.Equal(modified, File.GetLastWriteTimeUtc(path));
        return result;
    }

    [Fact]
    public void A_healthy_image_is_clean()
    {
        string path = Populated("ok.bti");
        var result = CheckUnchanged(path);
        Assert.Empty(result.Problems);
        Assert.True(result.Clean);
        Assert.Equal(4UL, result.AllocatedClusters);
    }

    [Fact]
    public void A_shared_cluster_is_reported_and_repair_keeps_it_with_the_lowest_virtual_cluster()
    {
        string path = Populated("shared.bti");
        var contents = ImageTestFiles.Contents(path);
        ulong physicalOf1 = ImageTestFiles.ReadEntry(path, 1);
        ImageTestFiles.WriteEntry(path, 9, physicalOf1);
        Assert.ThrowsAny<ImageFormatException>(() => ImageFile.Open(path, readOnly: true, directIo: false));

        var result = CheckUnchanged(path);
        var problem = Assert.Single(result.Problems);
        Assert.Equal(ImageProblemKind.SharedCluster, problem.Kind);
        Assert.Contains("virtual cluster 9", problem.Message);
        Assert.Contains("virtual cluster 1 ", problem.Message);
        Assert.True(result.HasCorruption);

        var repaired = ImageChecker.Check(path, repair: true);
        Assert.True(repaired.Clean);
        Assert.Single(repaired.Repairs);
        Assert.Equal(physicalOf1, ImageTestFiles.ReadEntry(path, 1));
        Assert.Equal(0UL, ImageTestFiles.ReadEntry(path, 9));
        Assert.Equal(contents, ImageTestFiles.Contents(path));   // cluster 9 read cluster 1's data; now zeros, as before the damage
        Assert.Empty(ImageChecker.Check(path).Problems);
    }

    [Theory]
    [InlineData(1UL)]            // the map area
    [InlineData(1UL << 40)]      // absurdly far out: once made opening hang building the free list
    [InlineData(ulong.MaxValue)]
    public void An_invalid_entry_is_reported_and_repair_clears_it(ulong physical)
    {
        string path = Populated($"invalid{physical}.bti");
        var contents = ImageTestFiles.Contents(path);
        ImageTestFiles.WriteEntry(path, 7, physical);
        var error = Assert.ThrowsAny<ImageFormatException>(() => ImageFile.Open(path, readOnly: true, directIo: false));
        Assert.Contains("check --repair", error.Message);

        var result = CheckUnchanged(path);
        Assert.Equal(ImageProblemKind.InvalidEntry, Assert.Single(result.Problems).Kind);
        Assert.Contains("virtual cluster 7", result.Problems[0].Message);

        Assert.True(ImageChecker.Check(path, repair: true).Clean);
        Assert.Equal(0UL, ImageTestFiles.ReadEntry(path, 7));
        Assert.Equal(contents, ImageTestFiles.Contents(path));
    }

    [Fact]
    public void Garbage_in_the_map_padding_is_reported_and_zeroed()
    {
        string path = Populated("padding.bti");
        var header = ImageTestFiles.HeaderOf(path);
        ImageTestFiles.WriteBytes(path, (long)(header.MapOffset + header.MapEntries * 8 + 100), [0x5A]);

        var result = CheckUnchanged(path);
        Assert.Equal(ImageProblemKind.MapPadding, Assert.Single(result.Problems).Kind);
        Assert.True(ImageChecker.Check(path, repair: true).Clean);
        Assert.Empty(ImageChecker.Check(path).Problems);
    }

    [Fact]
    public void A_leaked_cluster_is_found_by_its_data_and_repair_punches_it()
    {
        string path = Populated("leak.bti");
        var header = ImageTestFiles.HeaderOf(path);
        ulong leaked = ImageTestFiles.ReadEntry(path, 1);
        ImageTestFiles.WriteEntry(path, 1, 0);   // as if a crash came between unmapping and punching
        var contents = ImageTestFiles.Contents(path);
        ulong usage = ImageTestFiles.DiskUsage(path);

        var result = CheckUnchanged(path);
        var problem = Assert.Single(result.Problems);
        Assert.Equal(ImageProblemKind.LeakedClusters, problem.Kind);
        Assert.False(problem.IsCorruption);
        Assert.False(result.HasCorruption);
        Assert.Contains($"physical cluster {leaked} ", problem.Message);
        Assert.Equal(1UL, result.LeakedClusters);

        var repaired = ImageChecker.Check(path, repair: true);
        Assert.True(repaired.Clean);
        Assert.True(ImageTestFiles.IsHole(path, (long)(leaked * header.ClusterSize), header.ClusterSize));
        Assert.True(ImageTestFiles.DiskUsage(path) <= usage - Cluster);
        Assert.Equal(contents, ImageTestFiles.Contents(path));
    }

    [Fact]
    public void Adjacent_leaked_clusters_are_reported_as_one_range()
    {
        string path = Populated("leaks.bti");
        ImageTestFiles.WriteEntry(path, 0, 0);
        ImageTestFiles.WriteEntry(path, 1, 0);
        ImageTestFiles.WriteEntry(path, 2, 0);
        var result = ImageChecker.Check(path);
        var problem = Assert.Single(result.Problems);
        Assert.Contains("(3) hold", problem.Message);
        Assert.Equal(3UL, result.LeakedClusters);
    }

    [Fact]
    public void An_entry_past_the_end_of_the_file_is_harmless_and_repair_clears_it()
    {
        string path = Populated("beyond.bti");
        ulong fileClusters = (ulong)new FileInfo(path).Length / Cluster;
        ImageTestFiles.WriteEntry(path, 12, fileClusters + 3);
        var contents = ImageTestFiles.Contents(path);   // the image still opens: a crash can leave this
        Assert.All(contents.AsSpan((int)(12 * Cluster), (int)Cluster).ToArray(), b => Assert.Equal(0, b));

        var result = CheckUnchanged(path);
        var problem = Assert.Single(result.Problems);
        Assert.Equal(ImageProblemKind.BeyondEndOfFile, problem.Kind);
        Assert.False(result.HasCorruption);

        Assert.True(ImageChecker.Check(path, repair: true).Clean);
        Assert.Equal(0UL, ImageTestFiles.ReadEntry(path, 12));
        Assert.Equal(contents, ImageTestFiles.Contents(path));
    }

    [Fact]
    public void Several_kinds_of_damage_are_all_reported_and_repaired_together()
    {
        string path = Populated("many.bti");
        var header = ImageTestFiles.HeaderOf(path);
        ImageTestFiles.WriteEntry(path, 5, 0);                                       // leak
        ImageTestFiles.WriteEntry(path, 8, ImageTestFiles.ReadEntry(path, 0));       // shared
        ImageTestFiles.WriteEntry(path, 100, 0xFFFF_FFFF_FFFF);                      // invalid
        ImageTestFiles.WriteBytes(path, (long)(header.MapOffset + header.MapBytes - 1), [1]);   // padding

        var result = CheckUnchanged(path);
        Assert.Equal(4, result.Problems.Count);
        Assert.Equal(3, result.Problems.Count(p => p.IsCorruption));
        var repaired = ImageChecker.Check(path, repair: true);
        Assert.True(repaired.Clean, string.Join("; ", repaired.Remaining.Select(p => p.Message)));
        Assert.Equal(4, repaired.Repairs.Count);
        using var image = ImageFile.Open(path, readOnly: true, directIo: false);
        Assert.Equal(3UL, image.AllocatedClusters);
    }

    [Fact]
    public void A_repaired_image_serves_again_and_allocation_does_not_reuse_a_live_cluster()
    {
        string path = Populated("serve.bti");
        ImageTestFiles.WriteEntry(path, 9, ImageTestFiles.ReadEntry(path, 2));
        Assert.True(ImageChecker.Check(path, repair: true).Clean);
        using var image = ImageFile.Open(path, readOnly: false, directIo: false);
        var live = Enumerable.Range(0, 16).Select(v => image.Entry((ulong)v)).Where(p => p != 0).ToHashSet();
        for (ulong v = 10; v < 14; v++) Assert.DoesNotContain(image.Allocate(v), live);
    }

    [Theory]
    [InlineData("foreign")]
    [InlineData("truncated")]
    [InlineData("header")]
    public void Files_that_are_not_intact_images_are_refused_with_a_clear_error_and_left_alone(string damage)
    {
        string path = Populated($"{damage}.bti");
        switch (damage)
        {
            case "foreign": File.WriteAllBytes(path, ImageTestFiles.Pattern(100_000, 3)); break;
            case "truncated": File.WriteAllBytes(path, File.ReadAllBytes(path)[..5000]); break;
            case "header": ImageTestFiles.WriteBytes(path, 20, [0xFF]); break;
        }
        var before = File.ReadAllBytes(path);
        var error = Assert.ThrowsAny<ImageFormatException>(() => ImageChecker.Check(path, repair: true));
        Assert.DoesNotContain("\n", error.Message);
        Assert.Equal(before, File.ReadAllBytes(path));
    }

    [Fact]
    public void A_check_reports_progress_up_to_the_total()
    {
        string path = Populated("progress.bti");
        ulong last = 0, total = 0;
        ImageChecker.Check(path, progress: (d, t) => (last, total) = (d, t));
        Assert.True(total > 0);
        Assert.Equal(total, last);
    }

    public void Dispose() => _files.Dispose();
}
