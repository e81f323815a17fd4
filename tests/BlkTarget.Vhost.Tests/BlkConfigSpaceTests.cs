using System.Buffers.Binary;
using BlkTarget.Storage;
using BlkTarget.Storage.Ram;
using BlkTarget.Vhost.Blk;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlkTarget.Vhost.Tests;

public class BlkConfigSpaceTests
{
    private static readonly BlockDeviceInfo Info = new(1UL << 33, 4096, false, true, true, false);

    [Fact]
    public void Fields_sit_at_their_virtio_offsets()
    {
        var config = new BlkConfigSpace(Info, new BlkOptions { Queues = 2, SegMax = 126, SizeMax = 1 << 20, MaxRangeSegments = 32 });
        var b = new byte[BlkConfigSpace.Size];
        config.Read(0, b);
        Assert.Equal((1UL << 33) / 512, BinaryPrimitives.ReadUInt64LittleEndian(b));
        Assert.Equal(1u << 20, BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(8)));
        Assert.Equal(126u, BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(12)));
        Assert.Equal(4096u, BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(20)));
        Assert.Equal(1, b[32]);
        Assert.Equal(2, BinaryPrimitives.ReadUInt16LittleEndian(b.AsSpan(34)));
        Assert.Equal(32u, BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(40)));
        Assert.Equal(8u, BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(44)));   // discard alignment in sectors
        Assert.Equal(32u, BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(52)));
        Assert.Equal(1, b[56]);
    }

    [Fact]
    public void Reads_past_the_struct_are_zero_padded_and_partial_reads_work()
    {
        var config = new BlkConfigSpace(Info, new BlkOptions());
        var b = Enumerable.Repeat((byte)0xFF, 256).ToArray();
        config.Read(0, b);
        Assert.All(b.AsSpan(BlkConfigSpace.Size).ToArray(), x => Assert.Equal(0, x));
        var part = new byte[4];
        config.Read(20, part);
        Assert.Equal(4096u, BinaryPrimitives.ReadUInt32LittleEndian(part));
        config.Read(1000, part);
        Assert.Equal(new byte[4], part);
    }

    [Fact]
    public void Only_the_writeback_byte_is_writable()
    {
        var config = new BlkConfigSpace(Info, new BlkOptions());
        Assert.True(config.WriteCacheEnabled);
        Assert.True(config.Write(32, [0]));
        Assert.False(config.WriteCacheEnabled);
        Assert.False(config.Write(0, [1, 2, 3, 4]));
        Assert.False(config.Write(32, [7]));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void A_device_reset_restores_the_configured_write_cache_setting(bool configured)
    {
        using var disk = new RamDisk(1 << 20);
        var device = new VirtioBlkDevice("test", disk, new BlkOptions { WriteCache = configured }, NullLogger.Instance);
        Assert.True(device.WriteConfig(BlkConfigSpace.OffWriteback, [configured ? (byte)0 : (byte)1]));
        Assert.Equal(!configured, device.Context.Config.WriteCacheEnabled);
        device.Reset();
        Assert.Equal(configured, device.Context.Config.WriteCacheEnabled);
        var writeback = new byte[1];
        device.ReadConfig(BlkConfigSpace.OffWriteback, writeback);
        Assert.Equal(configured ? 1 : 0, writeback[0]);
    }

    [Fact]
    public void Read_only_backend_offers_ro_and_no_discard()
    {
        var ro = new BlockDeviceInfo(1 << 20, 512, true, true, true, false);
        ulong features = VirtioBlkDevice.ComputeFeatures(ro, new BlkOptions());
        Assert.NotEqual(0UL, features & (1UL << VirtioBlk.FeatureRo));
        Assert.Equal(0UL, features & (1UL << VirtioBlk.FeatureDiscard));
        ulong rw = VirtioBlkDevice.ComputeFeatures(Info, new BlkOptions());
        Assert.Equal(0UL, rw & (1UL << VirtioBlk.FeatureRo));
        Assert.NotEqual(0UL, rw & (1UL << VirtioBlk.FeatureDiscard));
        Assert.NotEqual(0UL, rw & (1UL << 32));
    }

    [Fact]
    public void Range_limits_and_alignment_follow_the_medium_where_it_is_narrower()
    {
        var medium = Info with { BlockSize = 512, MaxDiscardBytes = 64 << 20, DiscardGranularity = 65536, MaxWriteZeroesBytes = 1UL << 32 };
        var b = new byte[BlkConfigSpace.Size];
        new BlkConfigSpace(medium, new BlkOptions()).Read(0, b);
        Assert.Equal((64u << 20) / 512, BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(36)));      // max_discard_sectors
        Assert.Equal(65536u / 512, BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(44)));         // discard_sector_alignment
        Assert.Equal((1u << 30) / 512, BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(48)));     // ours (1 GiB) is lower
        Assert.Equal(1, b[56]);
    }

    [Fact]
    public void A_medium_without_discard_offers_neither_discard_nor_unmapping_write_zeroes()
    {
        var medium = Info with { SupportsDiscard = false, ZeroesCanUnmap = false };
        ulong features = VirtioBlkDevice.ComputeFeatures(medium, new BlkOptions());
        Assert.Equal(0UL, features & (1UL << VirtioBlk.FeatureDiscard));
        Assert.NotEqual(0UL, features & (1UL << VirtioBlk.FeatureWriteZeroes));
        var b = new byte[BlkConfigSpace.Size];
        new BlkConfigSpace(medium, new BlkOptions()).Read(0, b);
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(36)));
        Assert.Equal((1u << 30) / 512, BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(48)));
        Assert.Equal(0, b[56]);                                                                    // write_zeroes_may_unmap

        // Discard, but zeroing writes every zero: write-zeroes must not claim it may unmap.
        new BlkConfigSpace(Info with { ZeroesCanUnmap = false }, new BlkOptions()).Read(0, b);
        Assert.Equal(0, b[56]);
    }
}
