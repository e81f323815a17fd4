using BlkTarget.Storage;
using BlkTarget.Storage.Faults;
using BlkTarget.Storage.Ram;
using BlkTarget.Vhost.Scsi;

namespace BlkTarget.Vhost.Tests.Scsi;

/// <summary>
/// WRITE SAME(10)/(16) with a pattern (SBC-3 5.42, 5.43): the one Data-Out block lands on every LBA of the range,
/// in bounded pieces, within the VPD B0h MAXIMUM WRITE SAME LENGTH. Expected data and sense are written out.
/// </summary>
public sealed class WriteSameTests : IDisposable
{
    private readonly List<ScsiHarness> _harnesses = [];

    public void Dispose()
    {
        foreach (var h in _harnesses) h.Dispose();
    }

    private static readonly SenseCode InvalidFieldInCdb = new(0x05, 0x24, 0x00);
    private static readonly SenseCode WriteError = new(0x03, 0x0C, 0x00);

    private ScsiHarness Harness(IBlockDevice disk)
    {
        var h = new ScsiHarness(disks =>
        {
            disks.Add(disk);
            return [new ScsiLunDefinition(0, 0, disk, "WS")];
        });
        _harnesses.Add(h);
        return h;
    }

    private static byte[] Filled(int length, byte value)
    {
        var b = new byte[length];
        b.AsSpan().Fill(value);
        return b;
    }

    /// <summary>A block whose bytes all differ from their neighbours: a misplaced copy shows.</summary>
    private static byte[] Distinct(int length)
    {
        var b = new byte[length];
        for (int i = 0; i < length; i++) b[i] = (byte)(i % 251 + 1);
        return b;
    }

    private static byte[] Read(ScsiHarness h, ulong lba, int blocks, int blockSize = 512)
    {
        var data = new byte[blocks * blockSize];
        for (int at = 0; at < blocks; at += 64)
        {
            int n = Math.Min(64, blocks - at);
            var r = h.Run(Cdbs.Rw16(ScsiOp.Read16, lba + (ulong)at, (uint)n), dataIn: n * blockSize);
            r.AssertGood();
            r.Data.CopyTo(data, at * blockSize);
        }
        return data;
    }

    private static byte[] Ws10(uint lba, ushort blocks, byte flags = 0) => Cdbs.Rw10(ScsiOp.WriteSame10, lba, blocks, flags);

    private static byte[] Ws16(ulong lba, uint blocks, byte flags = 0) => Cdbs.Rw16(ScsiOp.WriteSame16, lba, blocks, flags);

    [Fact]
    public void A_pattern_block_is_written_to_every_lba_of_the_range_and_nowhere_else()
    {
        var h = Harness(new RamDisk(1 << 20));
        // sg_write_same --16 --in=F --lba=100 --num=8, F = one block of A5h
        h.Run(Ws16(100, 8), dataOut: Filled(512, 0xA5)).AssertGood();
        byte[] expected = [.. new byte[512], .. Filled(8 * 512, 0xA5), .. new byte[512]];
        Assert.Equal(expected, Read(h, 99, 10));

        var block = Distinct(512);
        var r = h.Run(Ws10(200, 3), dataOut: block);
        r.AssertGood();
        Assert.Equal(0u, r.Resid);
        Assert.Equal([.. new byte[512], .. block, .. block, .. block, .. new byte[512]], Read(h, 199, 5));
    }

    [Fact]
    public void With_unmap_a_non_zero_block_is_written_and_a_zero_block_still_unmaps()
    {
        var disk = new RecordingDisk(1 << 20);
        var h = Harness(disk);
        h.Run(Ws16(8, 2, flags: 0x08), dataOut: Filled(512, 0x5A)).AssertGood();      // UNMAP, non-zero block
        h.Run(Ws10(12, 1, flags: 0x08), dataOut: Filled(512, 0x3C)).AssertGood();
        Assert.Equal([(BlockOperation.Write, BlockRequestFlags.None), (BlockOperation.Write, BlockRequestFlags.None)], disk.Operations);
        Assert.Equal([.. Filled(1024, 0x5A), .. new byte[1024], .. Filled(512, 0x3C)], Read(h, 8, 5));

        disk.Operations.Clear();
        h.Run(Ws16(8, 2, flags: 0x08), dataOut: new byte[512]).AssertGood();             // UNMAP, zero block
        h.Run(Ws16(12, 1, flags: 0x09)).AssertGood();                                    // UNMAP, NDOB
        Assert.Equal([(BlockOperation.WriteZeroes, BlockRequestFlags.Unmap), (BlockOperation.WriteZeroes, BlockRequestFlags.Unmap)],
            disk.Operations.Where(o => o.Operation != BlockOperation.Read));
        Assert.Equal(new byte[5 * 512], Read(h, 8, 5));
    }

    [Fact]
    public void A_long_range_goes_out_in_bounded_pieces_one_after_another()
    {
        var disk = new DeferringDisk(4 << 20);
        var h = Harness(disk);
        h.Settle = disk.CompleteOne;
        var block = Distinct(512);
        // 4099 blocks from LBA 1: two pieces of 256 iovecs x 4 KiB (1 MiB) and a last one of three blocks.
        h.Run(Ws16(1, 4099), dataOut: block).AssertGood();
        Assert.Equal(
            [
                (BlockOperation.Write, 512UL, 1UL << 20, 256),
                (BlockOperation.Write, 512UL + (1 << 20), 1UL << 20, 256),
                (BlockOperation.Write, 512UL + (2 << 20), 1536UL, 1),
            ],
            disk.Requests);
        Assert.Equal(1, disk.MaxHeld);
        var data = Read(h, 0, 4101);
        Assert.Equal(new byte[512], data[..512]);
        for (int i = 1; i <= 4099; i++) Assert.True(block.AsSpan().SequenceEqual(data.AsSpan(i * 512, 512)), $"block {i}");
        Assert.Equal(new byte[512], data[(4100 * 512)..]);
    }

    [Fact]
    public void Four_kib_blocks_take_the_pattern_block_whole()
    {
        var h = Harness(new RamDisk(1 << 20, 4096));
        var block = Distinct(4096);
        h.Run(Ws10(2, 5), dataOut: block).AssertGood();
        Assert.Equal([.. new byte[4096], .. block, .. block, .. block, .. block, .. block, .. new byte[4096]], Read(h, 1, 7, 4096));
    }

    [Fact]
    public void More_than_the_maximum_write_same_length_is_an_invalid_field_in_cdb()
    {
        var h = Harness(new RamDisk(1 << 20));
        // VPD B0h MAXIMUM WRITE SAME LENGTH of a 512-byte RAM LUN: 2097152 blocks (1 GiB).
        h.Run(Ws16(0, 2097153), dataOut: Filled(512, 1)).AssertCheck(InvalidFieldInCdb);

        var narrow = Harness(new RecordingDisk(1 << 20, info => info with { MaxWriteZeroesBytes = 128 << 10 }));   // 256 blocks
        narrow.Run(Ws16(0, 257), dataOut: Filled(512, 1)).AssertCheck(InvalidFieldInCdb);
        narrow.Run(Ws16(0, 256), dataOut: Filled(512, 1)).AssertGood();
        Assert.Equal(Filled(256 * 512, 1), Read(narrow, 0, 256));
    }

    [Fact]
    public void A_medium_that_cannot_write_zeroes_gets_zeros_written()
    {
        var disk = new RecordingDisk(1 << 20, info => info with { SupportsWriteZeroes = false });
        var h = Harness(disk);
        h.Run(Cdbs.Rw10(ScsiOp.Write10, 4, 3), dataOut: Filled(1536, 0x77)).AssertGood();
        h.Run(Ws10(4, 2), dataOut: new byte[512]).AssertGood();
        h.Run(Ws16(6, 1, flags: 0x01)).AssertGood();                                     // NDOB
        Assert.Equal(new byte[1536], Read(h, 4, 3));
        Assert.DoesNotContain(disk.Operations, o => o.Operation == BlockOperation.WriteZeroes);
    }

    [Fact]
    public void A_failed_piece_ends_the_command_with_a_write_error()
    {
        var ram = new RamDisk(4 << 20);
        var disk = new FaultInjectingDisk(ram, [new FaultRule(BlockStatus.IoError) { Operation = BlockOperation.Write, RangeStart = 1 << 20, RangeLength = 1 }]);
        var h = Harness(disk);
        var r = h.Run(Ws16(0, 4096), dataOut: Filled(512, 9));
        r.AssertCheck(WriteError);
        Assert.Equal(1, disk.Injected);
        Assert.Equal(Filled(512, 9), Read(h, 2047, 1));                                  // the first piece landed
        Assert.Equal(new byte[512], Read(h, 4095, 1));                                   // nothing after the failed one
    }
}
