using BlkTarget.Storage.Image;

namespace BlkTarget.Storage.Tests.Image;

/// <summary>convert: raw and image in any direction, sparse both ways, contents identical.</summary>
public sealed class ConvertTests : IDisposable
{
    private const uint Cluster = 64 << 10;
    private readonly ImageTestFiles _files = new();

    /// <summary>A 32 MiB raw disk: data in clusters 0, 3-4 (one run), a lone 4 KiB block in 100, an all-zero
    /// written cluster (20) and the last 512 bytes; holes elsewhere.</summary>
    private string SampleRaw(string name = "disk.raw", ulong size = 32 << 20) => _files.Raw(name, size,
        (0, ImageTestFiles.Pattern((int)Cluster, 1)),
        (3 * Cluster, ImageTestFiles.Pattern(2 * (int)Cluster, 2)),
        (100 * Cluster + 8192, ImageTestFiles.Pattern(4096, 3)),
        (20 * Cluster, new byte[Cluster]),
        (size - 512, ImageTestFiles.Pattern(512, 4)));

    [Fact]
    public void Raw_to_image_to_raw_is_identical_and_allocates_only_non_zero_clusters()
    {
        string raw = SampleRaw(), image = _files.PathFor("disk.bti"), back = _files.PathFor("back.raw");
        var (toImage, from, clusters) = DiskCopy.Convert(raw, image, "image", null);
        Assert.Equal("raw", from);
        Assert.Equal(5UL, clusters);                      // 0, 3, 4, 100 and the last one; not the zero cluster 20
        Assert.Equal(5UL * Cluster, toImage.DataBytes);
        using (var img = ImageFile.Open(image, readOnly: true, directIo: false))
        {
            Assert.Equal(5UL, img.AllocatedClusters);
            Assert.Equal(0UL, img.Entry(20));
            Assert.Equal(0UL, img.Entry(50));
        }
        Assert.Empty(ImageChecker.Check(image).Problems);

        var (toRaw, from2, _) = DiskCopy.Convert(image, back, "raw", null);
        Assert.Equal("image", from2);
        Assert.Equal(File.ReadAllBytes(raw), File.ReadAllBytes(back));
        // Sparse: only the non-zero 4 KiB blocks take space (the lone block, 2+1 clusters, the tail).
        Assert.Equal(3UL * Cluster + 2 * 4096, toRaw.DataBytes);
        Assert.True(ImageTestFiles.DiskUsage(back) <= 3 * Cluster + 2 * 4096 + 64 * 1024, $"raw output uses {ImageTestFiles.DiskUsage(back)} bytes");
        Assert.True(ImageTestFiles.IsHole(back, 20 * Cluster, Cluster));
    }

    [Fact]
    public void Image_to_image_can_change_the_cluster_size()
    {
        string raw = SampleRaw(), image = _files.PathFor("a.bti"), small = _files.PathFor("small.bti"), large = _files.PathFor("large.bti");
        DiskCopy.Convert(raw, image, "image", null);
        var (_, _, smallClusters) = DiskCopy.Convert(image, small, "image", 4096);
        var (_, _, largeClusters) = DiskCopy.Convert(small, large, "image", 1 << 20);
        Assert.Equal(16 + 32 + 1 + 1UL, smallClusters);   // 16 + 32 data blocks, the lone block, the tail block
        Assert.Equal(3UL, largeClusters);                 // MiB 0 (clusters 0-4), MiB 6 (cluster 100), the last MiB
        var expected = File.ReadAllBytes(raw);
        Assert.Equal(expected, ImageTestFiles.Contents(small));
        Assert.Equal(expected, ImageTestFiles.Contents(large));
    }

    [Fact]
    public void A_converted_image_keeps_the_source_cluster_size_unless_told_otherwise()
    {
        string source = _files.Image("src.bti", 8 << 20, 16384, (16384, ImageTestFiles.Pattern(100, 5)));
        string copy = _files.PathFor("copy.bti");
        DiskCopy.Convert(source, copy, "image", null);
        Assert.Equal(16384u, ImageTestFiles.HeaderOf(copy).ClusterSize);
    }

    [Fact]
    public void A_raw_file_whose_size_is_not_a_multiple_of_512_is_padded_with_zeros()
    {
        string raw = _files.Raw("odd.raw", 10_000, (9000, ImageTestFiles.Pattern(1000, 6)));
        string image = _files.PathFor("odd.bti"), back = _files.PathFor("odd-back.raw");
        DiskCopy.Convert(raw, image, "image", 4096);
        Assert.Equal(10_240UL, ImageTestFiles.HeaderOf(image).VirtualSize);
        DiskCopy.Convert(image, back, "raw", null);
        var expected = new byte[10_240];
        File.ReadAllBytes(raw).CopyTo(expected, 0);
        Assert.Equal(expected, File.ReadAllBytes(back));
    }

    [Fact]
    public void An_all_zero_disk_converts_to_an_empty_image()
    {
        string raw = _files.Raw("zero.raw", 4 << 20, (0, new byte[1 << 20]));
        string image = _files.PathFor("zero.bti");
        var (result, _, clusters) = DiskCopy.Convert(raw, image, "image", null);
        Assert.Equal(0UL, clusters);
        Assert.Equal(0UL, result.DataBytes);
        Assert.True(new FileInfo(image).Length <= 2 * Cluster);
    }

    [Fact]
    public void An_existing_destination_is_refused_and_left_alone()
    {
        string raw = SampleRaw(), existing = _files.Raw("existing.raw", 4096, (0, ImageTestFiles.Pattern(4096, 7)));
        var before = File.ReadAllBytes(existing);
        Assert.ThrowsAny<IOException>(() => DiskCopy.Convert(raw, existing, "image", null));
        Assert.ThrowsAny<IOException>(() => DiskCopy.Convert(raw, raw, "raw", null));
        Assert.Equal(before, File.ReadAllBytes(existing));
    }

    [Fact]
    public void A_damaged_source_image_is_an_error_and_leaves_no_output()
    {
        string image = _files.Image("bad.bti", 8 << 20, Cluster, (0, ImageTestFiles.Pattern(4096, 8)));
        ImageTestFiles.WriteEntry(image, 3, ImageTestFiles.ReadEntry(image, 0));
        string output = _files.PathFor("out.raw");
        var error = Assert.ThrowsAny<ImageFormatException>(() => DiskCopy.Convert(image, output, "raw", null));
        Assert.Contains("corrupt allocation map", error.Message);
        Assert.False(File.Exists(output));
    }

    [Fact]
    public void A_cancelled_conversion_removes_its_partial_output()
    {
        string raw = SampleRaw(), output = _files.PathFor("cancelled.bti");
        using var cancel = new CancellationTokenSource();
        cancel.Cancel();
        Assert.ThrowsAny<OperationCanceledException>(() => DiskCopy.Convert(raw, output, "image", null, cancel: cancel.Token));
        Assert.False(File.Exists(output));
    }

    [Fact]
    public void Progress_is_reported_in_order_up_to_the_virtual_size()
    {
        string raw = SampleRaw(), output = _files.PathFor("progress.bti");
        var seen = new List<ulong>();
        DiskCopy.Convert(raw, output, "image", null, (done, total) => { Assert.Equal(32UL << 20, total); seen.Add(done); });
        Assert.Equal(seen.Order(), seen);
        Assert.Equal(32UL << 20, seen[^1]);
    }

    public void Dispose() => _files.Dispose();
}
