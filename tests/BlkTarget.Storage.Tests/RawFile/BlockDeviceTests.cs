using static BlkTarget.Storage.Tests.RawFile.ExportedLoop;

namespace BlkTarget.Storage.Tests.RawFile;

/// <summary>
/// <c>file:</c> on a real block device: loop devices over sparse files, opened O_DIRECT. What the export offers must
/// follow the device's queue limits, and discard / write-zeroes must do what they promise on it. Needs root and
/// losetup: without them these tests fail rather than skip.
/// </summary>
public sealed class BlockDeviceTests
{
    private const string Scratch = "/var/tmp";

    [Fact]
    public void A_loop_device_over_a_file_offers_discard_and_write_zeroes_within_its_sysfs_limits()
    {
        using var x = new ExportedLoop(Scratch, blockSize: 4096);
        ulong discardMax = x.Loop.Limit("discard_max_bytes"), granularity = x.Loop.Limit("discard_granularity");
        ulong zeroesMax = x.Loop.Limit("write_zeroes_max_bytes");
        Assert.True(discardMax > 0, "a loop device over a file on this filesystem should discard (punch holes)");
        var info = x.Disk.Info;
        Assert.True(x.Disk.IsBlockDevice);
        Assert.Equal((ulong)DeviceSize, info.SizeBytes);
        Assert.True(info.SupportsDiscard);
        Assert.True(info.SupportsWriteZeroes);
        Assert.Equal(discardMax / 4096 * 4096, info.MaxDiscardBytes);
        Assert.Equal(granularity > 4096 ? (uint)granularity : 0u, info.DiscardGranularity);
        Assert.Equal(zeroesMax / 4096 * 4096, info.MaxWriteZeroesBytes);
        Assert.Equal(zeroesMax > 0, info.ZeroesCanUnmap);
    }

    [Fact]
    public void A_block_device_grows_only_up_to_its_own_size_after_the_device_grew()
    {
        using var x = new ExportedLoop(Scratch);
        var tooLarge = Assert.Throws<ArgumentException>(() => x.Disk.Resize(DeviceSize + Span));
        Assert.Contains("grow it first", tooLarge.Message);
        // What an administrator does: grow the device (here: its backing file, then losetup -c), then the disk.
        using (var backing = File.OpenWrite(x.Loop.BackingFile)) backing.SetLength(DeviceSize + 2 * Span);
        LoopDevice.Run("losetup", "-c", x.Loop.Device);
        x.Disk.Resize(DeviceSize + Span);
        Assert.Equal((ulong)(DeviceSize + Span), x.Disk.Info.SizeBytes);
        Assert.Equal(BlockStatus.Ok, x.Run(BlockOperation.WriteZeroes, DeviceSize, Span));
        Assert.Equal(BlockStatus.OutOfRange, x.Run(BlockOperation.WriteZeroes, DeviceSize + Span, 4096));
    }

    [Fact]
    public void Discard_gives_the_backing_files_blocks_back_and_keeps_the_data_around_it()
    {
        using var x = new ExportedLoop(Scratch);
        x.Fill();
        ulong before = x.Allocated;

        Assert.Equal(BlockStatus.Ok, x.Run(BlockOperation.Discard, Span, 2 * Span));
        Assert.Equal(BlockStatus.Ok, x.Run(BlockOperation.Flush));

        if (Environment.OSVersion.Version >= new Version(6, 12))
            Assert.False(x.Disk.DiscardWorker!.Preferred, "the kernel refused BLOCK_URING_CMD_DISCARD: the BLKDISCARD fallback did it");
        Assert.True(x.Allocated <= before - 2 * Span, "the discarded range still occupies the backing file");
        // A discard promises nothing about the range itself (here it happens to read as zeros); the rest is intact.
        x.AssertContents((Span, 2 * Span));
    }

    [Fact]
    public void Discard_through_the_blkdiscard_fallback_frees_blocks_as_well()
    {
        using var x = new ExportedLoop(Scratch);
        // What a kernel without BLOCK_URING_CMD_DISCARD (before 6.12) ends up doing: BLKDISCARD on the worker thread.
        x.Disk.DiscardWorker!.Preferred = true;
        x.Fill();
        ulong before = x.Allocated;

        Assert.Equal(BlockStatus.Ok, x.Run(BlockOperation.Discard, 0, Span));

        Assert.True(x.Allocated <= before - Span);
        x.AssertContents((0, Span));
    }

    [Fact]
    public void Write_zeroes_without_unmap_reads_as_zeros_and_keeps_the_blocks()
    {
        using var x = new ExportedLoop(Scratch);
        x.Fill();
        ulong before = x.Allocated;

        Assert.Equal(BlockStatus.Ok, x.Run(BlockOperation.WriteZeroes, Span + 4096, Span));
        Assert.Equal(BlockStatus.Ok, x.Run(BlockOperation.Flush));

        x.AssertContents((Span + 4096, Span));
        Assert.True(x.Allocated >= before, "write-zeroes without UNMAP deallocated");
    }

    [Fact]
    public void Write_zeroes_with_unmap_reads_as_zeros_and_frees_the_blocks()
    {
        using var x = new ExportedLoop(Scratch);
        x.Fill();
        ulong before = x.Allocated;

        Assert.Equal(BlockStatus.Ok, x.Run(BlockOperation.WriteZeroes, Span, 2 * Span, BlockRequestFlags.Unmap));
        Assert.Equal(BlockStatus.Ok, x.Run(BlockOperation.Flush));

        x.AssertContents((Span, 2 * Span));
        Assert.True(x.Allocated <= before - 2 * Span, "write-zeroes with UNMAP kept the blocks");
    }

    [Fact]
    public void A_device_whose_discard_was_switched_off_in_sysfs_offers_no_discard_but_still_zeroes()
    {
        using var x = new ExportedLoop(Scratch, loop =>
        {
            loop.SetLimit("discard_max_bytes", 0);
            Assert.Equal(0UL, loop.Limit("discard_max_bytes"));
        });
        Assert.False(x.Disk.Info.SupportsDiscard);
        Assert.True(x.Disk.Info.SupportsWriteZeroes);
        x.Fill();

        Assert.Equal(BlockStatus.Unsupported, x.Run(BlockOperation.Discard, 0, Span));
        Assert.Equal(BlockStatus.Ok, x.Run(BlockOperation.WriteZeroes, 0, Span, BlockRequestFlags.Unmap));

        x.AssertContents((0, Span));
    }

    [Fact]
    public void A_device_that_stops_discarding_after_it_was_advertised_answers_unsupported_not_ok()
    {
        using var x = new ExportedLoop(Scratch);
        Assert.True(x.Disk.Info.SupportsDiscard);
        x.Loop.SetLimit("discard_max_bytes", 0);

        // The ring's command is refused, the BLKDISCARD fallback is refused as well: the device, not the kernel.
        Assert.Equal(BlockStatus.Unsupported, x.Run(BlockOperation.Discard, 0, Span));
        Assert.False(x.Disk.DiscardWorker!.Preferred);
    }

    [Fact]
    public void A_device_that_can_neither_discard_nor_write_zeroes_offers_no_discard_and_zeroes_by_writing()
    {
        using var ramfs = new RamfsDirectory();
        using var x = new ExportedLoop(ramfs.Path);
        Assert.Equal(0UL, x.Loop.Limit("discard_max_bytes"));
        Assert.Equal(0UL, x.Loop.Limit("write_zeroes_max_bytes"));
        Assert.False(x.Disk.Info.SupportsDiscard);
        Assert.True(x.Disk.Info.SupportsWriteZeroes);
        Assert.False(x.Disk.Info.ZeroesCanUnmap);
        x.Fill();

        Assert.Equal(BlockStatus.Unsupported, x.Run(BlockOperation.Discard, 0, Span));
        Assert.Equal(BlockStatus.Ok, x.Run(BlockOperation.WriteZeroes, 0, Span));
        Assert.Equal(BlockStatus.Ok, x.Run(BlockOperation.WriteZeroes, 2 * Span, Span, BlockRequestFlags.Unmap));

        x.AssertContents((0, Span), (2 * Span, Span));
    }

    [Fact]
    public void Write_zeroes_with_unmap_still_zeroes_after_the_device_lost_its_write_zeroes_command()
    {
        // A loop device over tmpfs claims write-zeroes, but tmpfs refuses the first zeroing without unmap (no
        // ZERO_RANGE) and the loop driver then drops the limit to 0: a may-unmap zeroing fails from then on.
        using var x = new ExportedLoop("/dev/shm");
        x.Fill();

        Assert.Equal(BlockStatus.Ok, x.Run(BlockOperation.WriteZeroes, 0, Span));
        Assert.Equal(BlockStatus.Ok, x.Run(BlockOperation.WriteZeroes, 2 * Span, Span, BlockRequestFlags.Unmap));

        x.AssertContents((0, Span), (2 * Span, Span));
    }
}
