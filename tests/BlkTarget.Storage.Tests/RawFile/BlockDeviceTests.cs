using BlkTarget.Storage.RawFile;
using BlkTarget.Storage.Tests.Conformance;
using BlkTarget.Storage.Tests.Image;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlkTarget.Storage.Tests.RawFile;

/// <summary>
/// <c>file:</c> on a real block device: loop devices over sparse files, opened O_DIRECT. What the export offers must
/// follow the device's queue limits, and discard / write-zeroes must do what they promise on it. Needs root and
/// losetup: without them these tests fail rather than skip.
/// </summary>
public sealed class BlockDeviceTests
{
    private const long DeviceSize = 16 << 20;
    private const int Span = 1 << 20;
    private const string Scratch = "/var/tmp";

    private static FileDisk Open(LoopDevice loop, uint blockSize = 512) =>
        FileDisk.Open(new FileDiskOptions { Path = loop.Device, BlockSize = blockSize }, NullLogger.Instance);

    private static byte[] Pattern(int length, byte seed) => Enumerable.Range(0, length).Select(i => (byte)(i * 7 + seed + (i >> 9))).ToArray();

    /// <summary>Writes a pattern over [0, 4 MiB) and makes it durable (the backing file's blocks allocated).</summary>
    private static byte[] Fill(ChannelDriver driver)
    {
        var data = Pattern(4 * Span, 3);
        for (int i = 0; i < 4; i++)
            Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, (ulong)(i * Span), data.AsSpan(i * Span, Span)));
        Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.Flush, 0, 0));
        return data;
    }

    private static byte[] ReadAll(ChannelDriver driver)
    {
        var back = new byte[4 * Span];
        for (int i = 0; i < 4; i++)
            Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, (ulong)(i * Span), back.AsSpan(i * Span, Span)));
        return back;
    }

    /// <summary>The pattern everywhere except the <paramref name="zeroed"/> ranges, which read as zeros.</summary>
    private static void AssertContents(byte[] pattern, byte[] actual, params (int Offset, int Length)[] zeroed)
    {
        var expected = (byte[])pattern.Clone();
        foreach (var (offset, length) in zeroed) expected.AsSpan(offset, length).Clear();
        int same = expected.AsSpan().CommonPrefixLength(actual);
        Assert.True(same == expected.Length, $"byte {same} reads {actual[Math.Min(same, actual.Length - 1)]:x2}, expected {expected[Math.Min(same, expected.Length - 1)]:x2}");
    }

    [Fact]
    public void A_loop_device_over_a_file_offers_discard_and_write_zeroes_within_its_sysfs_limits()
    {
        using var loop = LoopDevice.Create(Scratch, DeviceSize);
        using var disk = Open(loop, blockSize: 4096);
        ulong discardMax = loop.Limit("discard_max_bytes"), granularity = loop.Limit("discard_granularity"), zeroesMax = loop.Limit("write_zeroes_max_bytes");
        Assert.True(discardMax > 0, "a loop device over a file on this filesystem should discard (punch holes)");
        Assert.True(disk.IsBlockDevice);
        Assert.Equal((ulong)DeviceSize, disk.Info.SizeBytes);
        Assert.True(disk.Info.SupportsDiscard);
        Assert.True(disk.Info.SupportsWriteZeroes);
        Assert.Equal(discardMax / 4096 * 4096, disk.Info.MaxDiscardBytes);
        Assert.Equal(granularity > 4096 ? (uint)granularity : 0u, disk.Info.DiscardGranularity);
        Assert.Equal(zeroesMax / 4096 * 4096, disk.Info.MaxWriteZeroesBytes);
        Assert.Equal(zeroesMax > 0, disk.Info.ZeroesCanUnmap);
    }

    [Fact]
    public void Discard_gives_the_backing_files_blocks_back_and_keeps_the_data_around_it()
    {
        using var loop = LoopDevice.Create(Scratch, DeviceSize);
        using var disk = Open(loop);
        using var driver = new ChannelDriver(disk);
        var data = Fill(driver);
        ulong before = ImageTestFiles.DiskUsage(loop.BackingFile);

        Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.Discard, Span, 2 * Span));
        Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.Flush, 0, 0));
        if (Environment.OSVersion.Version >= new Version(6, 12))
            Assert.False(disk.DiscardWorker!.Preferred, "the kernel refused BLOCK_URING_CMD_DISCARD: the BLKDISCARD fallback did it");

        Assert.True(ImageTestFiles.DiskUsage(loop.BackingFile) <= before - 2 * Span, "the discarded range still occupies the backing file");
        // A discard promises nothing about the range itself (here it happens to read as zeros); the rest is intact.
        AssertContents(data, ReadAll(driver), (Span, 2 * Span));
    }

    [Fact]
    public void Discard_through_the_blkdiscard_fallback_frees_blocks_as_well()
    {
        using var loop = LoopDevice.Create(Scratch, DeviceSize);
        using var disk = Open(loop);
        // What a kernel without BLOCK_URING_CMD_DISCARD (before 6.12) ends up doing: BLKDISCARD on the worker thread.
        disk.DiscardWorker!.Preferred = true;
        using var driver = new ChannelDriver(disk);
        var data = Fill(driver);
        ulong before = ImageTestFiles.DiskUsage(loop.BackingFile);

        Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.Discard, 0, Span));

        Assert.True(ImageTestFiles.DiskUsage(loop.BackingFile) <= before - Span);
        AssertContents(data, ReadAll(driver), (0, Span));
    }

    [Fact]
    public void Write_zeroes_without_unmap_reads_as_zeros_and_keeps_the_blocks()
    {
        using var loop = LoopDevice.Create(Scratch, DeviceSize);
        using var disk = Open(loop);
        using var driver = new ChannelDriver(disk);
        var data = Fill(driver);
        ulong before = ImageTestFiles.DiskUsage(loop.BackingFile);

        Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.WriteZeroes, Span + 4096, Span));
        Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.Flush, 0, 0));

        AssertContents(data, ReadAll(driver), (Span + 4096, Span));
        Assert.True(ImageTestFiles.DiskUsage(loop.BackingFile) >= before, "write-zeroes without UNMAP deallocated");
    }

    [Fact]
    public void Write_zeroes_with_unmap_reads_as_zeros_and_frees_the_blocks()
    {
        using var loop = LoopDevice.Create(Scratch, DeviceSize);
        using var disk = Open(loop);
        using var driver = new ChannelDriver(disk);
        var data = Fill(driver);
        ulong before = ImageTestFiles.DiskUsage(loop.BackingFile);

        Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.WriteZeroes, Span, 2 * Span, BlockRequestFlags.Unmap));
        Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.Flush, 0, 0));

        AssertContents(data, ReadAll(driver), (Span, 2 * Span));
        Assert.True(ImageTestFiles.DiskUsage(loop.BackingFile) <= before - 2 * Span, "write-zeroes with UNMAP kept the blocks");
    }

    [Fact]
    public void A_device_whose_discard_was_switched_off_in_sysfs_offers_no_discard_but_still_zeroes()
    {
        using var loop = LoopDevice.Create(Scratch, DeviceSize);
        loop.SetLimit("discard_max_bytes", 0);
        Assert.Equal(0UL, loop.Limit("discard_max_bytes"));
        using var disk = Open(loop);
        Assert.False(disk.Info.SupportsDiscard);
        Assert.True(disk.Info.SupportsWriteZeroes);
        using var driver = new ChannelDriver(disk);
        var data = Fill(driver);

        Assert.Equal(BlockStatus.Unsupported, driver.Run(BlockOperation.Discard, 0, Span));
        Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.WriteZeroes, 0, Span, BlockRequestFlags.Unmap));

        AssertContents(data, ReadAll(driver), (0, Span));
    }

    [Fact]
    public void A_device_that_can_neither_discard_nor_write_zeroes_offers_no_discard_and_zeroes_by_writing()
    {
        using var ramfs = new RamfsDirectory();
        using var loop = LoopDevice.Create(ramfs.Path, DeviceSize);
        Assert.Equal(0UL, loop.Limit("discard_max_bytes"));
        Assert.Equal(0UL, loop.Limit("write_zeroes_max_bytes"));
        using var disk = Open(loop);
        Assert.False(disk.Info.SupportsDiscard);
        Assert.True(disk.Info.SupportsWriteZeroes);
        Assert.False(disk.Info.ZeroesCanUnmap);
        using var driver = new ChannelDriver(disk);
        var data = Fill(driver);

        Assert.Equal(BlockStatus.Unsupported, driver.Run(BlockOperation.Discard, 0, Span));
        Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.WriteZeroes, 0, Span));
        Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.WriteZeroes, 2 * Span, Span, BlockRequestFlags.Unmap));

        AssertContents(data, ReadAll(driver), (0, Span), (2 * Span, Span));
    }

    [Fact]
    public void Write_zeroes_with_unmap_still_zeroes_after_the_device_lost_its_write_zeroes_command()
    {
        // A loop device over tmpfs claims write-zeroes, but tmpfs refuses the first zeroing without unmap (no
        // ZERO_RANGE) and the loop driver then drops the limit to 0: a may-unmap zeroing fails from then on.
        using var loop = LoopDevice.Create("/dev/shm", DeviceSize);
        using var disk = Open(loop);
        using var driver = new ChannelDriver(disk);
        var data = Fill(driver);

        Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.WriteZeroes, 0, Span));
        Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.WriteZeroes, 2 * Span, Span, BlockRequestFlags.Unmap));

        AssertContents(data, ReadAll(driver), (0, Span), (2 * Span, Span));
    }
}
