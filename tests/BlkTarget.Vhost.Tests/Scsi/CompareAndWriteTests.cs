using System.Buffers.Binary;
using BlkTarget.Storage;
using BlkTarget.Storage.Ram;
using BlkTarget.Vhost.Scsi;
using BlkTarget.Vhost.Scsi.Reservations;

namespace BlkTarget.Vhost.Tests.Scsi;

/// <summary>
/// COMPARE AND WRITE (SBC-3 5.2): the command's outcomes on one LUN, with the sense bytes written out, and its
/// atomicity against writes and other COMPARE AND WRITEs on two exports of one disk, step by step with a backend
/// that completes only when told to.
/// </summary>
public sealed class CompareAndWriteTests : IDisposable
{
    private readonly List<ScsiHarness> _harnesses = [];

    public void Dispose()
    {
        foreach (var h in _harnesses) h.Dispose();
    }

    private ScsiHarness Harness(IBlockDevice disk, SharedLogicalUnit? lu = null, string name = "caw", bool ownsDisk = true)
    {
        var h = new ScsiHarness(disks =>
        {
            if (ownsDisk) disks.Add(disk);
            return [new ScsiLunDefinition(0, 0, disk, "CAW", Shared: lu)];
        }, name: name);
        _harnesses.Add(h);
        return h;
    }

    internal static byte[] Caw(ulong lba, byte blocks, byte flags = 0) => Cdbs.Make(16, ScsiOp.CompareAndWrite, c =>
    {
        c[1] = flags;
        BinaryPrimitives.WriteUInt64BigEndian(c.AsSpan(2), lba);
        c[13] = blocks;
    });

    private static byte[] Filled(int length, byte value)
    {
        var b = new byte[length];
        b.AsSpan().Fill(value);
        return b;
    }

    private static byte[] Read(ScsiHarness h, ulong lba, int blocks)
    {
        var r = h.Run(Cdbs.Rw16(ScsiOp.Read16, lba, (uint)blocks), dataIn: blocks * 512);
        r.AssertGood();
        return r.Data;
    }

    private static void Write(ScsiHarness h, ulong lba, byte[] data) =>
        h.Run(Cdbs.Rw16(ScsiOp.Write16, lba, (uint)(data.Length / 512)), dataOut: data).AssertGood();

    private static void AssertSense(ScsiResult r, params byte[] expected)
    {
        Assert.Equal(VirtioScsi.Ok, r.Response);
        Assert.Equal(ScsiStatus.CheckCondition, r.Status);
        Assert.Equal(18, r.SenseLength);
        Assert.Equal(expected, r.Sense[..18]);
    }

    // Fixed-format sense data, 18 bytes: response code, 0, key, INFORMATION (4), additional length 0Ah, 4 bytes, ASC, ASCQ, 4 bytes.
    private static readonly byte[] InvalidFieldInCdb = [0x70, 0, 0x05, 0, 0, 0, 0, 0x0A, 0, 0, 0, 0, 0x24, 0x00, 0, 0, 0, 0];
    private static readonly byte[] InvalidFieldInCommandIu = [0x70, 0, 0x05, 0, 0, 0, 0, 0x0A, 0, 0, 0, 0, 0x0E, 0x03, 0, 0, 0, 0];
    private static readonly byte[] LbaOutOfRange = [0x70, 0, 0x05, 0, 0, 0, 0, 0x0A, 0, 0, 0, 0, 0x21, 0x00, 0, 0, 0, 0];
    private static readonly byte[] WriteProtected = [0x70, 0, 0x07, 0, 0, 0, 0, 0x0A, 0, 0, 0, 0, 0x27, 0x00, 0, 0, 0, 0];

    [Fact]
    public void A_match_writes_the_second_half_of_the_data_out_buffer()
    {
        var h = Harness(new RamDisk(1 << 20));
        Write(h, 10, [.. Filled(512, 0x11), .. Filled(512, 0x12)]);
        var r = h.Run(Caw(10, 2), dataOut: [.. Filled(512, 0x11), .. Filled(512, 0x12), .. Filled(512, 0x21), .. Filled(512, 0x22)]);
        r.AssertGood();
        Assert.Equal(0u, r.Resid);
        Assert.Equal([.. new byte[512], .. Filled(512, 0x21), .. Filled(512, 0x22), .. new byte[512]], Read(h, 9, 4));
    }

    [Fact]
    public void A_mismatch_is_a_miscompare_with_the_offset_of_the_first_differing_byte_and_writes_nothing()
    {
        var h = Harness(new RamDisk(1 << 20));
        var medium = Filled(1024, 0x5A);
        medium[512 + 7] = 0x00;
        medium[900] = 0x01;
        Write(h, 20, medium);
        var r = h.Run(Caw(20, 2), dataOut: [.. Filled(1024, 0x5A), .. Filled(1024, 0xFF)]);
        // VALID 1 (F0h), MISCOMPARE (0Eh), INFORMATION 00000207h = byte 519 of the Data-Out buffer, MISCOMPARE DURING
        // VERIFY OPERATION (1Dh/00h).
        AssertSense(r, 0xF0, 0, 0x0E, 0x00, 0x00, 0x02, 0x07, 0x0A, 0, 0, 0, 0, 0x1D, 0x00, 0, 0, 0, 0);
        Assert.Equal(medium, Read(h, 20, 2));

        var first = h.Run(Caw(20, 1), dataOut: [.. Filled(511, 0x5A), 0x00, .. Filled(512, 0xFF)]);
        AssertSense(first, 0xF0, 0, 0x0E, 0x00, 0x00, 0x01, 0xFF, 0x0A, 0, 0, 0, 0, 0x1D, 0x00, 0, 0, 0, 0);
    }

    [Fact]
    public void Zero_blocks_is_good_and_touches_nothing()
    {
        var disk = new RecordingDisk(1 << 20);
        var h = Harness(disk);
        h.Run(Caw(5, 0)).AssertGood();
        Assert.Empty(disk.Operations);
    }

    [Fact]
    public void More_blocks_than_the_maximum_compare_and_write_length_is_an_invalid_field_in_cdb()
    {
        // VPD B0h MAXIMUM COMPARE AND WRITE LENGTH: 128 blocks of 512 bytes, 16 of 4 KiB.
        var h = Harness(new RamDisk(1 << 20));
        AssertSense(h.Run(Caw(0, 129), dataOut: new byte[2 * 129 * 512]), InvalidFieldInCdb);
        h.Run(Caw(0, 128), dataOut: new byte[2 * 128 * 512]).AssertGood();
        var big = Harness(new RamDisk(1 << 20, 4096));
        AssertSense(big.Run(Caw(0, 17), dataOut: new byte[2 * 17 * 4096]), InvalidFieldInCdb);
        big.Run(Caw(0, 16), dataOut: new byte[2 * 16 * 4096]).AssertGood();
    }

    [Fact]
    public void Protection_information_is_refused()
    {
        var h = Harness(new RamDisk(1 << 20));
        AssertSense(h.Run(Caw(0, 1, flags: 0x20), dataOut: new byte[1024]), InvalidFieldInCdb);     // WRPROTECT 001b
    }

    [Theory]
    [InlineData(512)]
    [InlineData(1536)]
    [InlineData(0)]
    public void A_data_out_buffer_of_other_than_twice_the_blocks_is_an_invalid_field_in_the_command_information_unit(int length)
    {
        var h = Harness(new RamDisk(1 << 20));
        Write(h, 3, Filled(512, 0x77));
        AssertSense(h.Run(Caw(3, 1), dataOut: Filled(length, 0x77)), InvalidFieldInCommandIu);
        Assert.Equal(Filled(512, 0x77), Read(h, 3, 1));
    }

    [Fact]
    public void A_range_beyond_the_capacity_is_an_lba_out_of_range()
    {
        var h = Harness(new RamDisk(1 << 20));                       // 2048 blocks
        AssertSense(h.Run(Caw(2047, 2), dataOut: new byte[2048]), LbaOutOfRange);
        AssertSense(h.Run(Caw(ulong.MaxValue, 1), dataOut: new byte[1024]), LbaOutOfRange);
        h.Run(Caw(2047, 1), dataOut: new byte[1024]).AssertGood();
    }

    [Fact]
    public void A_read_only_lun_is_write_protected()
    {
        var h = Harness(new RamDisk(1 << 20, readOnly: true));
        AssertSense(h.Run(Caw(0, 1), dataOut: new byte[1024]), WriteProtected);
    }

    [Fact]
    public void Fua_or_a_disabled_write_cache_makes_the_write_fua()
    {
        var disk = new RecordingDisk(1 << 20);
        var h = Harness(disk);
        h.Run(Caw(1, 1), dataOut: new byte[1024]).AssertGood();
        h.Run(Caw(1, 1, flags: 0x08), dataOut: new byte[1024]).AssertGood();
        Assert.Equal(
            [
                (BlockOperation.Read, BlockRequestFlags.None), (BlockOperation.Write, BlockRequestFlags.None),
                (BlockOperation.Read, BlockRequestFlags.None), (BlockOperation.Write, BlockRequestFlags.Fua),
            ],
            disk.Operations);
    }

    [Fact]
    public void A_nexus_the_reservation_excludes_gets_a_reservation_conflict()
    {
        var disk = new RamDisk(1 << 20);
        var lu = new SharedLogicalUnit("lu");
        var a = Harness(disk, lu, "export-a");
        var b = Harness(disk, lu, "export-b", ownsDisk: false);
        a.Run(PersistentReservationTests.PrOut(ReserveOutAction.Register), dataOut: PersistentReservationTests.Parameters(0, 0xA)).AssertGood();
        a.Run(PersistentReservationTests.PrOut(ReserveOutAction.Reserve, ReservationType.WriteExclusive),
            dataOut: PersistentReservationTests.Parameters(0xA, 0)).AssertGood();
        var conflict = b.Run(Caw(0, 1), dataOut: [.. new byte[512], .. Filled(512, 0xBB)]);
        Assert.Equal(VirtioScsi.Ok, conflict.Response);
        Assert.Equal(ScsiStatus.ReservationConflict, conflict.Status);
        Assert.Equal(new byte[512], Read(a, 0, 1));
        a.Run(Caw(0, 1), dataOut: [.. new byte[512], .. Filled(512, 0xAA)]).AssertGood();
        Assert.Equal(Filled(512, 0xAA), Read(b, 0, 1));
    }

    [Fact]
    public void Report_supported_operation_codes_gives_its_cdb_usage_data()
    {
        var h = Harness(new RamDisk(1 << 20));
        var r = h.Run(Cdbs.Make(12, ScsiOp.MaintenanceIn, c =>
        {
            c[1] = ScsiOp.SaReportSupportedOpcodes;
            c[2] = 0x01;                                              // REPORTING OPTIONS 001b: one operation code
            c[3] = ScsiOp.CompareAndWrite;
            BinaryPrimitives.WriteUInt32BigEndian(c.AsSpan(6), 64);
        }), dataIn: 64);
        r.AssertGood();
        byte[] expected =
        [
            0x00, 0x03, 0x00, 0x10,                                   // SUPPORT 011b, CDB SIZE 16
            0x89, 0xE8,                                               // opcode; WRPROTECT, FUA
            0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,           // LOGICAL BLOCK ADDRESS
            0x00, 0x00, 0x00,                                         // reserved
            0xFF,                                                     // NUMBER OF LOGICAL BLOCKS
            0x00,                                                     // GROUP NUMBER (ignored)
            0x04,                                                     // CONTROL: NACA
        ];
        Assert.Equal(expected, r.Data[..20]);
    }

    // ---- atomicity, step by step: two exports of one disk, a backend that completes only when told ----

    private (ScsiHarness A, ScsiHarness B, DeferringDisk Disk) TwoExports()
    {
        var disk = new DeferringDisk(1 << 20);
        var lu = new SharedLogicalUnit("shared");
        return (Harness(disk, lu, "export-a"), Harness(disk, lu, "export-b", ownsDisk: false), disk);
    }

    private static void CompleteAll(DeferringDisk disk, params ScsiHarness[] queues)
    {
        while (disk.CompleteOne())
            foreach (var q in queues) q.Queue.Poll();
    }

    [Fact]
    public void A_compare_and_write_reads_only_after_the_overlapping_writes_in_flight_completed()
    {
        var (a, b, disk) = TwoExports();
        var write = a.Start(Cdbs.Rw10(ScsiOp.Write10, 8, 2), dataOut: Filled(1024, 0x33));
        var caw = b.Start(Caw(9, 1), dataOut: [.. Filled(512, 0x33), .. Filled(512, 0x44)]);
        Assert.False(b.IsDone(caw));
        Assert.False(b.IsDone(caw));
        Assert.Equal([(BlockOperation.Write, 4096UL, 1024UL, 1)], disk.Requests);   // no read yet

        Assert.True(disk.CompleteOne());                                             // the write lands
        a.Collect(write).AssertGood();
        Assert.False(b.IsDone(caw));                                                 // the read is submitted on this poll
        Assert.Equal(BlockOperation.Read, disk.Requests[^1].Operation);
        CompleteAll(disk, b);
        b.Collect(caw).AssertGood();                                                 // it compared the write's data
        Assert.Equal((BlockOperation.Write, 4608UL, 512UL, 1), disk.Requests[^1]);
        a.Settle = disk.CompleteOne;
        Assert.Equal([.. Filled(512, 0x33), .. Filled(512, 0x44)], Read(a, 8, 2));
    }

    [Fact]
    public void Overlapping_writes_wait_while_a_compare_and_write_holds_its_range_and_others_do_not()
    {
        var (a, b, disk) = TwoExports();
        var caw = a.Start(Caw(16, 2), dataOut: [.. new byte[1024], .. Filled(1024, 0xC1)]);
        Assert.Equal([(BlockOperation.Read, 8192UL, 1024UL, 1)], disk.Requests);     // holds 16-17, reading

        var write = b.Start(Cdbs.Rw10(ScsiOp.Write10, 17, 1), dataOut: Filled(512, 0xB1));
        var writeSame = b.Start(Cdbs.Rw16(ScsiOp.WriteSame16, 15, 2), dataOut: Filled(512, 0xB2));
        var unmapParameters = Cdbs.UnmapParameters((100, 1), (16, 1));
        var unmap = b.Start(Cdbs.Unmap((ushort)unmapParameters.Length), dataOut: unmapParameters);
        var elsewhere = b.Start(Cdbs.Rw10(ScsiOp.Write10, 18, 1), dataOut: Filled(512, 0xB3));
        Assert.False(b.IsDone(write) || b.IsDone(writeSame) || b.IsDone(unmap));
        Assert.Equal(
            [(BlockOperation.Read, 8192UL, 1024UL, 1), (BlockOperation.Write, 9216UL, 512UL, 1)],      // only LBA 18
            disk.Requests);

        Assert.True(disk.CompleteOne());                                             // the read: a match, the write goes out
        Assert.Equal((BlockOperation.Write, 8192UL, 1024UL, 1), disk.Requests[^1]);
        Assert.True(disk.CompleteOne());                                             // LBA 18
        Assert.True(disk.CompleteOne());                                             // the compare and write's write
        a.Collect(caw).AssertGood();
        b.Collect(elsewhere).AssertGood();
        Assert.False(b.IsDone(write));                                               // retried on this poll: submitted now
        CompleteAll(disk, a, b);
        b.Collect(write).AssertGood();
        b.Collect(writeSame).AssertGood();
        b.Collect(unmap).AssertGood();
        Assert.Equal(
            [
                (BlockOperation.Read, 8192UL, 1024UL, 1),                            // compare and write: read 16-17
                (BlockOperation.Write, 9216UL, 512UL, 1),                            // LBA 18, not held
                (BlockOperation.Write, 8192UL, 1024UL, 1),                           // compare and write: write 16-17
                (BlockOperation.Write, 8704UL, 512UL, 1),                            // then the deferred: WRITE 17,
                (BlockOperation.Write, 7680UL, 1024UL, 1),                           // WRITE SAME 15-16,
                (BlockOperation.WriteZeroes, 51200UL, 512UL, 0),                     // UNMAP 100 and 16
                (BlockOperation.WriteZeroes, 8192UL, 512UL, 0),
            ],
            disk.Requests);
        a.Settle = disk.CompleteOne;
        Assert.Equal([.. Filled(512, 0xB2), .. new byte[512], .. Filled(512, 0xB1), .. Filled(512, 0xB3)], Read(a, 15, 4));
    }

    [Fact]
    public void Overlapping_compare_and_writes_on_two_exports_run_one_after_the_other()
    {
        var (a, b, disk) = TwoExports();
        var first = a.Start(Caw(40, 1), dataOut: [.. new byte[512], .. Filled(512, 0x01)]);
        var second = b.Start(Caw(40, 1), dataOut: [.. new byte[512], .. Filled(512, 0x02)]);
        Assert.Single(disk.Requests);                                                // the second waits for the range
        Assert.True(disk.CompleteOne());                                             // first: read, match
        Assert.True(disk.CompleteOne());                                             // first: write
        a.Collect(first).AssertGood();
        Assert.False(b.IsDone(second));                                              // holds the range now, reads
        CompleteAll(disk, a, b);
        // The second compared against the first's write: MISCOMPARE at byte 0.
        AssertSense(b.Collect(second), 0xF0, 0, 0x0E, 0, 0, 0, 0, 0x0A, 0, 0, 0, 0, 0x1D, 0x00, 0, 0, 0, 0);
        Assert.Equal(3, disk.Requests.Count);
        b.Settle = disk.CompleteOne;
        Assert.Equal(Filled(512, 0x01), Read(b, 40, 1));
    }
}
