using BlkTarget.Storage.RawFile;

namespace BlkTarget.Storage.Tests.RawFile;

/// <summary>Reading queue limits from a sysfs laid out like the kernel's, and what they let an export offer.</summary>
public sealed class BlockQueueLimitsTests : IDisposable
{
    private readonly string _sysfs = Directory.CreateDirectory(Path.Combine(Path.GetTempPath(), $"blkt-sysfs-{Guid.NewGuid():N}")).FullName;

    private static readonly BlockDeviceInfo Base = new(1 << 30, 512, false, SupportsDiscard: true, SupportsWriteZeroes: true, HasVolatileCache: true);

    /// <summary>A disk vdb (252:16) with partition vdb1 (252:17), as /sys/devices/... plus /sys/dev/block links.</summary>
    private void CreateDisk(string discardMax, string granularity, string zeroesMax, string logical = "512")
    {
        string disk = Directory.CreateDirectory(Path.Combine(_sysfs, "devices", "virtio", "block", "vdb")).FullName;
        string queue = Directory.CreateDirectory(Path.Combine(disk, "queue")).FullName;
        File.WriteAllText(Path.Combine(queue, "discard_max_bytes"), discardMax + "\n");
        File.WriteAllText(Path.Combine(queue, "discard_granularity"), granularity + "\n");
        File.WriteAllText(Path.Combine(queue, "write_zeroes_max_bytes"), zeroesMax + "\n");
        File.WriteAllText(Path.Combine(queue, "logical_block_size"), logical + "\n");
        string partition = Directory.CreateDirectory(Path.Combine(disk, "vdb1")).FullName;
        File.WriteAllText(Path.Combine(partition, "partition"), "1\n");
        string links = Directory.CreateDirectory(Path.Combine(_sysfs, "dev", "block")).FullName;
        File.CreateSymbolicLink(Path.Combine(links, "252:16"), disk);
        File.CreateSymbolicLink(Path.Combine(links, "252:17"), partition);
    }

    [Fact]
    public void A_disk_reads_its_own_queue_directory()
    {
        CreateDisk("1073741824", "4096", "0");
        Assert.Equal(new BlockQueueLimits(1 << 30, 4096, 0, 512), BlockQueueLimits.Read(252, 16, _sysfs));
    }

    [Fact]
    public void A_partition_reads_its_disks_queue_directory()
    {
        CreateDisk("2147483136", "512", "33554432", "4096");
        Assert.Equal(new BlockQueueLimits(2147483136, 512, 33554432, 4096), BlockQueueLimits.Read(252, 17, _sysfs));
    }

    [Fact]
    public void No_sysfs_entry_means_unknown_and_a_garbled_limit_is_an_error()
    {
        Assert.Null(BlockQueueLimits.Read(252, 16, _sysfs));
        CreateDisk("lots", "4096", "0");
        Assert.Throws<IOException>(() => BlockQueueLimits.Read(252, 16, _sysfs));
    }

    [Fact]
    public void Discard_is_offered_only_with_a_discard_limit_and_limits_are_rounded_to_the_block_size()
    {
        var info = new BlockQueueLimits(4294966784, 4096, 4294966784, 512).ApplyTo(Base with { BlockSize = 4096 });
        Assert.True(info.SupportsDiscard);
        Assert.True(info.SupportsWriteZeroes);
        Assert.Equal(4294963200UL, info.MaxDiscardBytes);             // 0xFFFFFE00 down to a 4 KiB multiple
        Assert.Equal(0u, info.DiscardGranularity);                     // a granule is one block
        Assert.Equal(4294963200UL, info.MaxWriteZeroesBytes);
        Assert.True(info.ZeroesCanUnmap);

        var small = new BlockQueueLimits(1 << 30, 65536, 0, 512).ApplyTo(Base);
        Assert.Equal(65536u, small.DiscardGranularity);

        var none = new BlockQueueLimits(0, 0, 0, 512).ApplyTo(Base);
        Assert.False(none.SupportsDiscard);
        Assert.Equal(0UL, none.MaxDiscardBytes);
        Assert.True(none.SupportsWriteZeroes);                         // the kernel writes zero pages
        Assert.Equal(0UL, none.MaxWriteZeroesBytes);
        Assert.False(none.ZeroesCanUnmap);                             // every zero is written
    }

    [Fact]
    public void Blocks_smaller_than_the_devices_logical_blocks_get_neither()
    {
        var info = new BlockQueueLimits(1 << 30, 4096, 1 << 30, 4096).ApplyTo(Base);
        Assert.False(info.SupportsDiscard);
        Assert.False(info.SupportsWriteZeroes);
    }

    public void Dispose() => Directory.Delete(_sysfs, recursive: true);
}
