using BlkTarget.Storage.Image;
using BlkTarget.Storage.Tests.Conformance;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlkTarget.Storage.Tests.Image;

/// <summary>Growing an image's virtual size: within the map's last cluster only the header changes; beyond it the
/// data clusters in the way of the larger map move to fresh clusters first. Offline (`image resize`) and online
/// (<see cref="ImageDisk.Resize"/>) run the same steps.</summary>
public sealed class ImageGrowthTests : IDisposable
{
    private readonly ImageTestFiles _files = new();

    public void Dispose() => _files.Dispose();

    private static byte[] FileBytes(string path, long offset, int length)
    {
        var bytes = new byte[length];
        using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        file.Position = offset;
        file.ReadExactly(bytes);
        return bytes;
    }

    private static ImageDisk OpenDisk(string path) => ImageDisk.Open(path, readOnly: false, 512, directIo: true, NullLogger.Instance);

    [Fact]
    public void Growing_within_the_maps_last_cluster_rewrites_only_the_header()
    {
        string path = _files.PathFor("pad.bti");
        ImageFile.Create(path, 1 << 20, 64 << 10);   // 16 entries in a map cluster that holds 8192
        using (var image = ImageFile.Open(path, readOnly: false, directIo: false))
            Assert.Equal(0, ImageGrowth.Run(image, 3 << 20));

        Assert.Equal(new byte[]
        {
            0x42, 0x4C, 0x4B, 0x54, 0x49, 0x4D, 0x47, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00,   // magic, version 1, header size 4096
            0x00, 0x00, 0x30, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,   // virtual size 3 MiB, cluster 64 KiB, flags 0
            0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x30, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,   // map offset 65536, 48 entries
            0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00,   // map bytes 65536, data offset 131072
        }, FileBytes(path, 0, 64));
        Assert.Equal(new byte[] { 0xFD, 0x74, 0x0C, 0x0A }, FileBytes(path, 124, 4));   // CRC-32C
        Assert.Equal(131072, new FileInfo(path).Length);
        Assert.True(ImageChecker.Check(path).Clean);
    }

    [Fact]
    public void Growing_past_the_map_area_moves_the_clusters_in_its_way_and_keeps_their_data()
    {
        // 4 KiB clusters, 2 MiB: 512 entries fill one map cluster; data starts at physical cluster 2.
        string path = _files.PathFor("move.bti");
        ImageFile.Create(path, 2 << 20, 4096);
        byte[] a = ImageTestFiles.Pattern(4096, 1), b = ImageTestFiles.Pattern(4096, 2), c = ImageTestFiles.Pattern(4096, 3);
        using (var disk = OpenDisk(path))
        using (var driver = new ChannelDriver(disk))
        {
            Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, 3 * 4096, a));   // physical 2
            Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, 0, b));          // physical 3
            Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, 7 * 4096, c));   // physical 4
            Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.Flush, 0, 0));
        }

        // 6 MiB: 1536 entries, 3 map clusters, data from physical 4 on: clusters 2 and 3 must go.
        using (var image = ImageFile.Open(path, readOnly: false, directIo: false))
            Assert.Equal(2, ImageGrowth.Run(image, 6 << 20));

        Assert.Equal(new byte[]
        {
            0x42, 0x4C, 0x4B, 0x54, 0x49, 0x4D, 0x47, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00,   // magic, version 1, header size 4096
            0x00, 0x00, 0x60, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,   // virtual size 6 MiB, cluster 4 KiB, flags 0
            0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,   // map offset 4096, 1536 entries
            0x00, 0x30, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,   // map bytes 12288, data offset 16384
        }, FileBytes(path, 0, 64));
        Assert.Equal(new byte[] { 0x6D, 0x00, 0xD2, 0x6B }, FileBytes(path, 124, 4));   // CRC-32C
        // Entries: virtual 0 (was physical 3) moved to 5, virtual 3 (was 2) to 6, virtual 7 stayed at 4.
        Assert.Equal(new byte[]
        {
            0x05, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x06, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x04, 0, 0, 0, 0, 0, 0, 0,
        }, FileBytes(path, 4096, 64));
        Assert.True(ImageTestFiles.IsHole(path, 8192, 8192), "the new map clusters read as zeros");
        Assert.Equal(b, FileBytes(path, 5 * 4096, 4096));
        Assert.Equal(a, FileBytes(path, 6 * 4096, 4096));
        Assert.Equal(c, FileBytes(path, 4 * 4096, 4096));
        var contents = ImageTestFiles.Contents(path);
        Assert.Equal(6 << 20, contents.Length);
        Assert.Equal(b, contents[..4096]);
        Assert.Equal(a, contents[(3 * 4096)..(4 * 4096)]);
        Assert.Equal(c, contents[(7 * 4096)..(8 * 4096)]);
        contents.AsSpan(0, 4096).Clear();
        contents.AsSpan(3 * 4096, 4096).Clear();
        contents.AsSpan(7 * 4096, 4096).Clear();
        Assert.False(contents.AsSpan().ContainsAnyExcept((byte)0), "everything else reads as zeros");
        Assert.True(ImageChecker.Check(path).Clean);
    }

    [Fact]
    public void A_served_image_grows_online_and_its_channels_see_the_new_size()
    {
        string path = _files.PathFor("online.bti");
        ImageFile.Create(path, 2 << 20, 4096);
        byte[] a = ImageTestFiles.Pattern(8192, 4), b = ImageTestFiles.Pattern(4096, 5);
        using (var disk = OpenDisk(path))
        using (var driver = new ChannelDriver(disk))
        {
            Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, 0, a));
            Assert.NotEqual(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, 2 << 20, b));   // past the end

            disk.Resize(64 << 20);

            Assert.Equal(64UL << 20, disk.Info.SizeBytes);
            Assert.Equal(64UL << 20, disk.Image.Header.VirtualSize);
            Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, (64 << 20) - 4096, b));
            var back = new byte[8192];
            Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, 0, back));
            Assert.Equal(a, back);
            var last = new byte[4096];
            Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, (64 << 20) - 4096, last));
            Assert.Equal(b, last);
            Assert.Throws<ArgumentException>(() => disk.Resize(32 << 20));
            Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.Flush, 0, 0));
        }
        Assert.Equal(64UL << 20, ImageTestFiles.HeaderOf(path).VirtualSize);
        Assert.True(ImageChecker.Check(path).Clean);
    }

    [Fact]
    public void A_map_beyond_the_limit_is_refused_with_advice_and_changes_nothing()
    {
        string path = _files.PathFor("limit.bti");
        ImageFile.Create(path, 1 << 20, 4096);
        using (var disk = OpenDisk(path))
        {
            // 4 KiB clusters: 512 GiB is the most a 1 GiB map covers.
            var e = Assert.Throws<ArgumentException>(() => disk.Resize((512UL << 30) + 4096));
            Assert.Contains("use a larger cluster size", e.Message);
            Assert.Equal(1UL << 20, disk.Info.SizeBytes);
            Assert.Throws<ArgumentException>(() => disk.Resize((1 << 20) + 100));   // not whole blocks
        }
        using (var image = ImageFile.Open(path, readOnly: false, directIo: false))
            Assert.Throws<ArgumentException>(() => ImageGrowth.Run(image, 1 << 20));   // not larger
        Assert.Equal(1UL << 20, ImageTestFiles.HeaderOf(path).VirtualSize);
        Assert.True(ImageChecker.Check(path).Clean);
    }
}
