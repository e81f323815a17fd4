using BlkTarget.Storage.Image;
using BlkTarget.Storage.Interop;
using BlkTarget.Storage.Tests.Conformance;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlkTarget.Storage.Tests.Image;

/// <summary>What makes the image thin: allocation on first write, space returned on discard, reuse after flush.</summary>
public sealed class ImageBackendTests : IDisposable
{
    private const uint Cluster = 64 << 10;
    private readonly string _dir = Directory.CreateDirectory(Path.Combine("/var/tmp", $"blkt-img-{Guid.NewGuid():N}")).FullName;

    private string NewImage(ulong size = 64 << 20)
    {
        string path = Path.Combine(_dir, $"{Guid.NewGuid():N}.bti");
        ImageFile.Create(path, size, Cluster);
        return path;
    }

    private static ImageDisk Open(string path, bool readOnly = false) => ImageDisk.Open(path, readOnly, 512, directIo: true, NullLogger.Instance);

    private static byte[] Pattern(int length, byte seed) => Enumerable.Range(0, length).Select(i => (byte)(i * 31 + seed)).ToArray();

    [Fact]
    public void A_new_image_costs_only_its_header_and_reads_as_zeros()
    {
        string path = NewImage(1UL << 30);
        Assert.True(ImageTestFiles.DiskUsage(path) <= 64 << 10, $"new 1 GiB image occupies {ImageTestFiles.DiskUsage(path)} bytes");
        using var disk = Open(path);
        using var driver = new ChannelDriver(disk);
        var data = new byte[1 << 20];
        Array.Fill(data, (byte)0xEE);
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, 512 << 20, data));
        Assert.All(data, b => Assert.Equal(0, b));
        Assert.Equal(0UL, disk.Image.AllocatedClusters);
    }

    [Fact]
    public void The_first_write_allocates_exactly_the_touched_clusters()
    {
        string path = NewImage();
        using var disk = Open(path);
        using var driver = new ChannelDriver(disk);
        // 8 KiB straddling the boundary between clusters 2 and 3.
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, 3 * Cluster - 4096, Pattern(8192, 1)));
        Assert.Equal(2UL, disk.Image.AllocatedClusters);
        Assert.NotEqual(0UL, disk.Image.Entry(2));
        Assert.NotEqual(0UL, disk.Image.Entry(3));
        // The untouched rest of an allocated cluster reads as zeros.
        var head = new byte[4096];
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, 2 * Cluster, head));
        Assert.All(head, b => Assert.Equal(0, b));
    }

    [Fact]
    public void Discarding_whole_clusters_deallocates_them_and_returns_the_space()
    {
        string path = NewImage();
        using var disk = Open(path);
        using var driver = new ChannelDriver(disk);
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, 0, Pattern(16 * (int)Cluster, 2)));
        Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.Flush, 0, 0));
        ulong before = ImageTestFiles.DiskUsage(path);
        Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.Discard, 4 * Cluster, 8 * Cluster));
        Assert.Equal(8UL, disk.Image.AllocatedClusters);
        // The map block written for the change may itself take its first 4 KiB on disk.
        Assert.True(before - ImageTestFiles.DiskUsage(path) >= 8 * Cluster - ImageFile.MapBlockSize, $"discard gave back only {before - ImageTestFiles.DiskUsage(path)} bytes");
        var back = new byte[Cluster];
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, 5 * Cluster, back));
        Assert.All(back, b => Assert.Equal(0, b));
    }

    [Fact]
    public void Write_zeroes_with_unmap_deallocates_and_partial_clusters_read_zero()
    {
        string path = NewImage();
        using var disk = Open(path);
        using var driver = new ChannelDriver(disk);
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, 0, Pattern(4 * (int)Cluster, 3)));
        // From the middle of cluster 0 to the middle of cluster 3: clusters 1-2 go away, 0 and 3 are punched in part.
        ulong start = Cluster / 2, length = 3 * Cluster;
        Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.WriteZeroes, start, length, flags: BlockRequestFlags.Unmap));
        Assert.Equal(2UL, disk.Image.AllocatedClusters);
        var all = new byte[4 * Cluster];
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, 0, all));
        var expected = Pattern(4 * (int)Cluster, 3);
        Array.Clear(expected, (int)start, (int)length);
        Assert.Equal(expected, all);
    }

    [Fact]
    public void Freed_clusters_are_reused_only_after_a_flush()
    {
        string path = NewImage();
        using var disk = Open(path);
        using var driver = new ChannelDriver(disk);
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, 0, Pattern((int)Cluster, 4)));
        ulong first = disk.Image.Entry(0);
        Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.Discard, 0, Cluster));
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, Cluster, Pattern((int)Cluster, 5)));
        Assert.NotEqual(first, disk.Image.Entry(1));          // not reusable yet: the unmapping is not durable
        Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.Flush, 0, 0));
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, 2 * Cluster, Pattern(4096, 6)));
        Assert.Equal(first, disk.Image.Entry(2));             // now it is, and it reads as a fresh cluster
        var back = new byte[Cluster];
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, 2 * Cluster, back));
        Assert.Equal(Pattern(4096, 6), back[..4096]);
        Assert.All(back[4096..], b => Assert.Equal(0, b));
    }

    [Fact]
    public void Data_and_map_survive_reopening()
    {
        string path = NewImage();
        var data = Pattern(3 * (int)Cluster, 7);
        using (var disk = Open(path))
        using (var driver = new ChannelDriver(disk))
        {
            Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, 10 * Cluster + 512, data));
            Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.Flush, 0, 0));
        }
        using var reopened = Open(path, readOnly: true);
        using var reader = new ChannelDriver(reopened);
        var back = new byte[data.Length];
        Assert.Equal(BlockStatus.Ok, reader.Transfer(BlockOperation.Read, 10 * Cluster + 512, back));
        Assert.Equal(data, back);
        Assert.Equal(4UL, reopened.Image.AllocatedClusters);
    }

    [Fact]
    public void Writing_an_image_twice_is_refused_while_it_is_open()
    {
        string path = NewImage();
        using var disk = Open(path);
        var error = Assert.ThrowsAny<IOException>(() => Open(path));
        Assert.Contains("in use", error.Message);
    }

    [Theory]
    [InlineData("truncated")]
    [InlineData("magic")]
    [InlineData("checksum")]
    [InlineData("duplicate")]
    public void Damaged_images_are_refused_with_a_clear_error_and_left_untouched(string damage)
    {
        string path = NewImage();
        using (var disk = Open(path))
        using (var driver = new ChannelDriver(disk))
            Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, 0, Pattern(2 * (int)Cluster, 8)));
        var header = ImageHeader.ForNewImage(64 << 20, Cluster);
        using (var file = new FileStream(path, FileMode.Open, FileAccess.ReadWrite))
        {
            switch (damage)
            {
                case "truncated": file.SetLength(1000); break;
                case "magic": file.Write("NOTANIMG"u8); break;
                case "checksum": file.Position = 16; file.WriteByte(0x77); break;
                case "duplicate":
                    // Point virtual cluster 1 at the physical cluster of virtual cluster 0.
                    var entry = new byte[8];
                    file.Position = (long)header.MapOffset;
                    file.ReadExactly(entry);
                    file.Position = (long)header.MapOffset + 8;
                    file.Write(entry);
                    break;
            }
        }
        var before = ImageTestFiles.RawBytes(path);
        var error = Assert.ThrowsAny<IOException>(() => Open(path));
        Assert.False(string.IsNullOrWhiteSpace(error.Message));
        Assert.Equal(before, ImageTestFiles.RawBytes(path));
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);
}
