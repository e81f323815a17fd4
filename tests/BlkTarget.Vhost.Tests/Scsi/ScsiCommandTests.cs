using System.Buffers.Binary;
using System.Text;
using BlkTarget.Storage;
using BlkTarget.Storage.Ram;
using BlkTarget.Vhost.Scsi;

namespace BlkTarget.Vhost.Tests.Scsi;

/// <summary>SCSI command emulation through a running request queue, one behaviour per test.</summary>
public sealed class ScsiCommandTests : IDisposable
{
    private ScsiHarness _h = new();

    public void Dispose() => _h.Dispose();

    private void Use(Func<List<IBlockDevice>, IReadOnlyList<ScsiLunDefinition>> luns)
    {
        _h.Dispose();
        _h = new ScsiHarness(luns);
    }

    private static byte[] Pattern(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    [Fact]
    public void Fixed_sense_data_has_response_code_70h_key_asc_and_ascq()
    {
        var sense = new byte[32];
        Assert.Equal(18, SenseCode.LbaOutOfRange.WriteFixed(sense));
        Assert.Equal(0x70, sense[0]);
        Assert.Equal(SenseKey.IllegalRequest, sense[2]);
        Assert.Equal(10, sense[7]);
        Assert.Equal(0x21, sense[12]);
        Assert.Equal(0x00, sense[13]);
        var shortBuffer = new byte[8];
        Assert.Equal(8, SenseCode.WriteProtected.WriteFixed(shortBuffer));
        Assert.Equal(SenseKey.DataProtect, shortBuffer[2]);
    }

    [Fact]
    public void Test_unit_ready_is_good_without_sense()
    {
        var r = _h.Run(Cdbs.Make(6, ScsiOp.TestUnitReady));
        r.AssertGood();
        Assert.Equal(0, r.SenseLength);
        Assert.Equal(108u, r.UsedLength);
    }

    [Theory]
    [InlineData(0x04)]   // FORMAT UNIT
    [InlineData(0x2f)]   // VERIFY(10)
    [InlineData(0x8e)]   // WRITE AND VERIFY(16)
    [InlineData(0xc0)]   // vendor specific group
    [InlineData(0x7f)]   // variable length
    public void Unsupported_opcodes_fail_with_invalid_command_operation_code(byte opcode)
    {
        _h.Run(Cdbs.Make(16, opcode)).AssertCheck(SenseCode.InvalidOpcode);
    }

    [Fact]
    public void Naca_in_the_control_byte_is_refused()
    {
        _h.Run(Cdbs.Make(6, ScsiOp.TestUnitReady, c => c[5] = 0x04)).AssertCheck(SenseCode.InvalidFieldInCdb);
    }

    [Fact]
    public void Inquiry_returns_at_most_the_allocation_length_and_reports_the_rest_as_residual()
    {
        // The full bytes are in InquiryGoldenTests; this is about lengths: 96 bytes of standard data.
        var r = _h.Run(Cdbs.Inquiry(), dataIn: 255);
        r.AssertGood();
        Assert.Equal(255u - 96, r.Resid);

        var truncated = _h.Run(Cdbs.Inquiry(allocation: 36), dataIn: 255);
        truncated.AssertGood();
        Assert.Equal(255u - 36, truncated.Resid);
        Assert.Equal(108u + 36, truncated.UsedLength);
    }

    [Fact]
    public void Inquiry_with_cmddt_or_a_page_code_without_evpd_is_refused()
    {
        _h.Run(Cdbs.Make(6, ScsiOp.Inquiry, c => { c[1] = 0x02; c[4] = 36; }), dataIn: 36).AssertCheck(SenseCode.InvalidFieldInCdb);
        _h.Run(Cdbs.Inquiry(page: 0x80), dataIn: 255).AssertCheck(SenseCode.InvalidFieldInCdb);
        _h.Run(Cdbs.Inquiry(evpd: true, page: 0x99), dataIn: 255).AssertCheck(SenseCode.InvalidFieldInCdb);
    }

    [Fact]
    public void Read_capacity_reports_last_lba_block_size_and_thin_provisioning()
    {
        var r10 = _h.Run(Cdbs.Make(10, ScsiOp.ReadCapacity10), dataIn: 8);
        r10.AssertGood();
        Assert.Equal((uint)(ScsiHarness.DiskBytes / 512 - 1), BinaryPrimitives.ReadUInt32BigEndian(r10.Data));
        Assert.Equal(512u, BinaryPrimitives.ReadUInt32BigEndian(r10.Data.AsSpan(4)));

        var r16 = _h.Run(Cdbs.ReadCapacity16(), dataIn: 32);
        r16.AssertGood();
        Assert.Equal(ScsiHarness.DiskBytes / 512 - 1, BinaryPrimitives.ReadUInt64BigEndian(r16.Data));
        Assert.Equal(512u, BinaryPrimitives.ReadUInt32BigEndian(r16.Data.AsSpan(8)));
        Assert.Equal(0xc0, r16.Data[14] & 0xc0);        // LBPME, LBPRZ

        _h.Run(Cdbs.Make(10, ScsiOp.ReadCapacity10, c => c[5] = 1), dataIn: 8).AssertCheck(SenseCode.InvalidFieldInCdb);
        _h.Run(Cdbs.Make(16, ScsiOp.ServiceActionIn16, c => c[1] = 0x11), dataIn: 32).AssertCheck(SenseCode.InvalidFieldInCdb);
    }

    [Fact]
    public void Read_capacity_of_a_read_only_lun_reports_no_provisioning()
    {
        Use(d => { var disk = new RamDisk(1 << 20, 4096, readOnly: true); d.Add(disk); return [new ScsiLunDefinition(0, 0, disk, "RO")]; });
        var r16 = _h.Run(Cdbs.ReadCapacity16(), dataIn: 32);
        Assert.Equal(4096u, BinaryPrimitives.ReadUInt32BigEndian(r16.Data.AsSpan(8)));
        Assert.Equal(0, r16.Data[14] & 0xc0);
    }

    [Theory]
    [InlineData(6)]
    [InlineData(10)]
    [InlineData(12)]
    [InlineData(16)]
    public void Written_blocks_read_back_with_every_cdb_size(int size)
    {
        var data = Pattern(4096, size);
        byte[] write = size switch
        {
            6 => Cdbs.Rw6(ScsiOp.Write6, 40, 8),
            10 => Cdbs.Rw10(ScsiOp.Write10, 40, 8, flags: 0x08),
            12 => Cdbs.Rw12(ScsiOp.Write12, 40, 8),
            _ => Cdbs.Rw16(ScsiOp.Write16, 40, 8, flags: 0x08),
        };
        byte[] read = size switch
        {
            6 => Cdbs.Rw6(ScsiOp.Read6, 40, 8),
            10 => Cdbs.Rw10(ScsiOp.Read10, 40, 8),
            12 => Cdbs.Rw12(ScsiOp.Read12, 40, 8),
            _ => Cdbs.Rw16(ScsiOp.Read16, 40, 8),
        };
        var w = _h.Run(write, dataOut: data);
        w.AssertGood();
        Assert.Equal(0u, w.Resid);
        var r = _h.Run(read, dataIn: 4096);
        r.AssertGood();
        Assert.Equal(data, r.Data);
        Assert.Equal(108u + 4096, r.UsedLength);
    }

    [Fact]
    public void Read6_with_length_zero_transfers_256_blocks()
    {
        var r = _h.Run(Cdbs.Rw6(ScsiOp.Read6, 0, 0), dataIn: 256 * 512);
        r.AssertGood();
        Assert.Equal(0u, r.Resid);
        Assert.Equal(ScsiResultBytes(256 * 512), r.UsedLength);
    }

    private static uint ScsiResultBytes(int data) => (uint)(108 + data);

    [Fact]
    public void Zero_length_reads_and_writes_are_good_and_move_nothing()
    {
        _h.Run(Cdbs.Rw10(ScsiOp.Read10, 0, 0)).AssertGood();
        _h.Run(Cdbs.Rw16(ScsiOp.Write16, 5, 0)).AssertGood();
    }

    [Fact]
    public void Lba_out_of_range_fails_without_overflow()
    {
        uint blocks = (uint)(ScsiHarness.DiskBytes / 512);
        _h.Run(Cdbs.Rw10(ScsiOp.Read10, blocks - 1, 1), dataIn: 512).AssertGood();
        _h.Run(Cdbs.Rw10(ScsiOp.Read10, blocks - 1, 2), dataIn: 1024).AssertCheck(SenseCode.LbaOutOfRange);
        _h.Run(Cdbs.Rw10(ScsiOp.Write10, blocks, 1), dataOut: new byte[512]).AssertCheck(SenseCode.LbaOutOfRange);
        _h.Run(Cdbs.Rw16(ScsiOp.Read16, ulong.MaxValue, 1), dataIn: 512).AssertCheck(SenseCode.LbaOutOfRange);
        _h.Run(Cdbs.Rw16(ScsiOp.Read16, ulong.MaxValue - 1, uint.MaxValue), dataIn: 512).AssertCheck(SenseCode.LbaOutOfRange);
    }

    [Fact]
    public void A_transfer_larger_than_the_buffers_is_an_overrun_and_a_smaller_one_leaves_a_residual()
    {
        var overrun = _h.Run(Cdbs.Rw10(ScsiOp.Read10, 0, 8), dataIn: 2048);
        Assert.Equal(VirtioScsi.Overrun, overrun.Response);
        Assert.Equal(VirtioScsi.Overrun, _h.Run(Cdbs.Rw10(ScsiOp.Write10, 0, 8), dataOut: new byte[512]).Response);

        var data = Pattern(1024, 7);
        _h.Run(Cdbs.Rw10(ScsiOp.Write10, 10, 2), dataOut: data).AssertGood();
        var r = _h.Run(Cdbs.Rw10(ScsiOp.Read10, 10, 2), dataIn: 4096);
        r.AssertGood();
        Assert.Equal(4096u - 1024, r.Resid);
        Assert.Equal(data, r.Data[..1024]);
        Assert.All(r.Data[1024..], b => Assert.Equal(0xee, b));   // the rest is not written
    }

    [Fact]
    public void Protection_information_fields_are_refused()
    {
        _h.Run(Cdbs.Rw10(ScsiOp.Read10, 0, 1, flags: 0x20), dataIn: 512).AssertCheck(SenseCode.InvalidFieldInCdb);
        _h.Run(Cdbs.Rw16(ScsiOp.Write16, 0, 1, flags: 0x20), dataOut: new byte[512]).AssertCheck(SenseCode.InvalidFieldInCdb);
    }

    [Fact]
    public void Writes_to_a_read_only_lun_fail_with_data_protect_and_mode_sense_shows_wp()
    {
        Use(d => { var disk = new RamDisk(1 << 20, readOnly: true); d.Add(disk); return [new ScsiLunDefinition(0, 0, disk, "RO")]; });
        _h.Run(Cdbs.Rw10(ScsiOp.Write10, 0, 1), dataOut: new byte[512]).AssertCheck(SenseCode.WriteProtected);
        _h.Run(Cdbs.Make(10, ScsiOp.WriteSame10, c => c[8] = 1), dataOut: new byte[512]).AssertCheck(SenseCode.WriteProtected);
        _h.Run(Cdbs.Unmap(24), dataOut: Cdbs.UnmapParameters((0, 1))).AssertCheck(SenseCode.WriteProtected);
        _h.Run(Cdbs.Rw10(ScsiOp.Read10, 0, 1), dataIn: 512).AssertGood();
        var sense = _h.Run(Cdbs.ModeSense6(ModePages.CachingPage), dataIn: 255);
        Assert.Equal(0x80, sense.Data[2] & 0x80);
    }

    [Fact]
    public void Synchronize_cache_checks_its_range()
    {
        _h.Run(Cdbs.Make(10, ScsiOp.SynchronizeCache10)).AssertGood();
        _h.Run(Cdbs.Rw16(ScsiOp.SynchronizeCache16, 0, 0)).AssertGood();
        _h.Run(Cdbs.Rw16(ScsiOp.SynchronizeCache16, ScsiHarness.DiskBytes / 512, 1)).AssertCheck(SenseCode.LbaOutOfRange);
    }

    [Fact]
    public void Unmap_zeroes_every_listed_range()
    {
        _h.Run(Cdbs.Rw10(ScsiOp.Write10, 0, 16), dataOut: Pattern(8192, 3)).AssertGood();
        var p = Cdbs.UnmapParameters((2, 2), (8, 4));
        _h.Run(Cdbs.Unmap((ushort)p.Length), dataOut: p).AssertGood();
        var back = _h.Run(Cdbs.Rw10(ScsiOp.Read10, 0, 16), dataIn: 8192).Data;
        var expected = Pattern(8192, 3);
        expected.AsSpan(2 * 512, 2 * 512).Clear();
        expected.AsSpan(8 * 512, 4 * 512).Clear();
        Assert.Equal(expected, back);
    }

    [Fact]
    public void Unmap_parameter_lists_are_validated_before_anything_is_unmapped()
    {
        _h.Run(Cdbs.Rw10(ScsiOp.Write10, 0, 1), dataOut: Pattern(512, 9)).AssertGood();
        _h.Run(Cdbs.Unmap(0)).AssertGood();
        _h.Run(Cdbs.Unmap(6), dataOut: new byte[6]).AssertCheck(SenseCode.ParameterListLengthError);
        var badLength = Cdbs.UnmapParameters((0, 1));
        BinaryPrimitives.WriteUInt16BigEndian(badLength.AsSpan(2), 15);
        _h.Run(Cdbs.Unmap((ushort)badLength.Length), dataOut: badLength).AssertCheck(SenseCode.ParameterListLengthError);
        var tooMany = Cdbs.UnmapParameters(Enumerable.Range(0, 33).Select(i => ((ulong)i, 1u)).ToArray());
        _h.Run(Cdbs.Unmap((ushort)tooMany.Length), dataOut: tooMany).AssertCheck(SenseCode.InvalidFieldInParameterList);
        var outOfRange = Cdbs.UnmapParameters((0, 1), (ScsiHarness.DiskBytes / 512, 1));
        _h.Run(Cdbs.Unmap((ushort)outOfRange.Length), dataOut: outOfRange).AssertCheck(SenseCode.LbaOutOfRange);
        _h.Run(Cdbs.Make(10, ScsiOp.Unmap, c => { c[1] = 1; c[8] = 24; }), dataOut: Cdbs.UnmapParameters((0, 1))).AssertCheck(SenseCode.InvalidFieldInCdb);
        Assert.Equal(VirtioScsi.Overrun, _h.Run(Cdbs.Unmap(24), dataOut: new byte[16]).Response);
        // Nothing above touched block 0.
        Assert.Equal(Pattern(512, 9), _h.Run(Cdbs.Rw10(ScsiOp.Read10, 0, 1), dataIn: 512).Data);
    }

    /// <summary>Serves one LUN on a <see cref="RecordingDisk"/> that describes itself as <paramref name="shape"/> says.</summary>
    private RecordingDisk UseShaped(Func<BlockDeviceInfo, BlockDeviceInfo> shape)
    {
        var disk = new RecordingDisk(ScsiHarness.DiskBytes, shape);
        Use(disks =>
        {
            disks.Add(disk);
            return [new ScsiLunDefinition(0, 0, disk, "SERIAL-0")];
        });
        return disk;
    }

    [Fact]
    public void A_lun_whose_medium_cannot_discard_is_not_thin_provisioned_but_still_zeroes()
    {
        var disk = UseShaped(info => info with { SupportsDiscard = false, ZeroesCanUnmap = false });
        Assert.Equal(0, _h.Run(Cdbs.ReadCapacity16(), dataIn: 32).Data[14]);                     // no LBPME, no LBPRZ
        Assert.Equal(0, _h.Run(Cdbs.Inquiry(true, 0xb2), dataIn: 255).Data[5]);                  // no LBPU, LBPWS
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32BigEndian(_h.Run(Cdbs.Inquiry(true, 0xb0), dataIn: 255).Data.AsSpan(20)));
        _h.Run(Cdbs.Unmap(24), dataOut: Cdbs.UnmapParameters((0, 1))).AssertCheck(SenseCode.InvalidOpcode);

        _h.Run(Cdbs.Rw10(ScsiOp.Write10, 0, 2), dataOut: Pattern(1024, 5)).AssertGood();
        _h.Run(Cdbs.Rw16(ScsiOp.WriteSame16, 0, 2, flags: 0x08), dataOut: new byte[512]).AssertGood();    // UNMAP bit
        Assert.Equal(new byte[1024], _h.Run(Cdbs.Rw10(ScsiOp.Read10, 0, 2), dataIn: 1024).Data);
        Assert.Equal(BlockRequestFlags.None, disk.Operations.Single(r => r.Operation == BlockOperation.WriteZeroes).Flags);
    }

    [Fact]
    public void Unmap_is_a_plain_discard_without_lbprz_where_zeroing_would_write_every_zero()
    {
        var disk = UseShaped(info => info with { ZeroesCanUnmap = false });
        Assert.Equal(0x80, _h.Run(Cdbs.ReadCapacity16(), dataIn: 32).Data[14]);                  // LBPME only
        Assert.Equal(0xe0, _h.Run(Cdbs.Inquiry(true, 0xb2), dataIn: 255).Data[5]);               // LBPU, LBPWS, LBPWS10
        var p = Cdbs.UnmapParameters((2, 2), (8, 4));
        _h.Run(Cdbs.Unmap((ushort)p.Length), dataOut: p).AssertGood();
        Assert.Equal([(BlockOperation.Discard, BlockRequestFlags.None), (BlockOperation.Discard, BlockRequestFlags.None)], disk.Operations);
    }

    [Fact]
    public void Block_limits_follow_the_medium_where_it_is_narrower()
    {
        UseShaped(info => info with { MaxDiscardBytes = 64 << 10, DiscardGranularity = 8192, MaxWriteZeroesBytes = 128 << 10 });
        var limits = _h.Run(Cdbs.Inquiry(true, 0xb0), dataIn: 255).Data;
        Assert.Equal((64u << 10) / 512, BinaryPrimitives.ReadUInt32BigEndian(limits.AsSpan(20)));   // maximum unmap LBA count
        Assert.Equal(8192u / 512, BinaryPrimitives.ReadUInt32BigEndian(limits.AsSpan(28)));         // optimal unmap granularity
        Assert.Equal((128UL << 10) / 512, BinaryPrimitives.ReadUInt64BigEndian(limits.AsSpan(36)));  // maximum write same length
        var tooLong = Cdbs.UnmapParameters((0, (64u << 10) / 512 + 1));
        _h.Run(Cdbs.Unmap((ushort)tooLong.Length), dataOut: tooLong).AssertCheck(SenseCode.InvalidFieldInParameterList);
    }

    [Fact]
    public void Write_same_with_a_zero_block_zeroes_and_bad_cdbs_are_refused()
    {
        _h.Run(Cdbs.Rw10(ScsiOp.Write10, 0, 8), dataOut: Pattern(4096, 4)).AssertGood();
        _h.Run(Cdbs.Make(10, ScsiOp.WriteSame10, c => { c[5] = 1; c[8] = 2; }), dataOut: new byte[512]).AssertGood();
        _h.Run(Cdbs.Rw16(ScsiOp.WriteSame16, 4, 2, flags: 0x08), dataOut: new byte[512]).AssertGood();    // UNMAP
        _h.Run(Cdbs.Rw16(ScsiOp.WriteSame16, 6, 1, flags: 0x01)).AssertGood();                          // NDOB
        var expected = Pattern(4096, 4);
        expected.AsSpan(512, 2 * 512).Clear();
        expected.AsSpan(4 * 512, 3 * 512).Clear();
        Assert.Equal(expected, _h.Run(Cdbs.Rw10(ScsiOp.Read10, 0, 8), dataIn: 4096).Data);

        _h.Run(Cdbs.Make(10, ScsiOp.WriteSame10), dataOut: new byte[512]).AssertCheck(SenseCode.InvalidFieldInCdb);      // 0 blocks (WSNZ)
        _h.Run(Cdbs.Make(10, ScsiOp.WriteSame10, c => { c[1] = 0x02; c[8] = 1; }), dataOut: new byte[512]).AssertCheck(SenseCode.InvalidFieldInCdb);   // LBDATA
        _h.Run(Cdbs.Rw16(ScsiOp.WriteSame16, ScsiHarness.DiskBytes / 512, 1), dataOut: new byte[512]).AssertCheck(SenseCode.LbaOutOfRange);
        Assert.Equal(VirtioScsi.Overrun, _h.Run(Cdbs.Make(10, ScsiOp.WriteSame10, c => c[8] = 1), dataOut: new byte[100]).Response);
    }

    [Fact]
    public void Mode_sense_returns_caching_control_and_all_pages_with_block_descriptors()
    {
        var caching = _h.Run(Cdbs.ModeSense10(ModePages.CachingPage), dataIn: 1024);
        caching.AssertGood();
        var d = caching.Data;
        Assert.Equal(8 + 8 + 20 - 2, BinaryPrimitives.ReadUInt16BigEndian(d));
        Assert.Equal(0x10, d[3]);                                              // DPOFUA, not WP
        Assert.Equal(8, BinaryPrimitives.ReadUInt16BigEndian(d.AsSpan(6)));
        Assert.Equal((uint)(ScsiHarness.DiskBytes / 512), BinaryPrimitives.ReadUInt32BigEndian(d.AsSpan(8)));
        Assert.Equal(512u, BinaryPrimitives.ReadUInt32BigEndian(d.AsSpan(12)) & 0xffffff);
        Assert.Equal(0x08, d[16]);                                             // caching mode page
        Assert.Equal(0x12, d[17]);
        Assert.Equal(0x04, d[18] & 0x04);                                      // WCE

        var all = _h.Run(Cdbs.ModeSense6(ModePages.AllPages, dbd: true), dataIn: 255);
        all.AssertGood();
        Assert.Equal(4 + 20 + 12 - 1, all.Data[0]);
        Assert.Equal(0, all.Data[3]);
        Assert.Equal(0x08, all.Data[4]);                                       // caching mode page
        Assert.Equal(0x0A, all.Data[24]);                                      // control mode page

        var longLba = _h.Run(Cdbs.ModeSense10(ModePages.ControlPage, llbaa: true), dataIn: 1024);
        Assert.Equal(1, longLba.Data[4] & 1);
        Assert.Equal(16, BinaryPrimitives.ReadUInt16BigEndian(longLba.Data.AsSpan(6)));

        var changeable = _h.Run(Cdbs.ModeSense10(ModePages.CachingPage, pageControl: 1, dbd: true), dataIn: 1024);
        Assert.Equal(0x04, changeable.Data[8 + 2]);
    }

    [Fact]
    public void Mode_sense_refuses_saved_values_unknown_pages_and_subpages()
    {
        _h.Run(Cdbs.ModeSense10(ModePages.CachingPage, pageControl: 3), dataIn: 1024).AssertCheck(SenseCode.SavingParametersNotSupported);
        _h.Run(Cdbs.ModeSense10(0x1c), dataIn: 1024).AssertCheck(SenseCode.InvalidFieldInCdb);
        _h.Run(Cdbs.ModeSense10(ModePages.CachingPage, subpage: 1), dataIn: 1024).AssertCheck(SenseCode.InvalidFieldInCdb);
        _h.Run(Cdbs.ModeSense10(ModePages.AllPages, subpage: 0xff), dataIn: 1024).AssertGood();
    }

    private byte[] CachingSelectList(bool wce, byte otherByte = 0)
    {
        var p = new byte[8 + 20];
        p[8] = ModePages.CachingPage;
        p[9] = 0x12;
        p[10] = (byte)(wce ? 0x04 : 0);
        p[12] = otherByte;
        return p;
    }

    private static byte[] ModeSelect10(int length, byte flags = 0x10) =>
        Cdbs.Make(10, ScsiOp.ModeSelect10, c => { c[1] = flags; BinaryPrimitives.WriteUInt16BigEndian(c.AsSpan(7), (ushort)length); });

    [Fact]
    public void Mode_select_switches_the_write_cache()
    {
        _h.Run(ModeSelect10(28), dataOut: CachingSelectList(wce: false)).AssertGood();
        Assert.False(_h.Device.Luns[0].WriteCacheEnabled);
        Assert.Equal(0, _h.Run(Cdbs.ModeSense10(ModePages.CachingPage, dbd: true), dataIn: 1024).Data[10] & 0x04);
        // Writes still work (as FUA) with the cache off.
        _h.Run(Cdbs.Rw10(ScsiOp.Write10, 0, 1), dataOut: new byte[512]).AssertGood();
        _h.Run(ModeSelect10(28), dataOut: CachingSelectList(wce: true)).AssertGood();
        Assert.True(_h.Device.Luns[0].WriteCacheEnabled);
    }

    [Fact]
    public void Writes_are_fua_while_the_write_cache_is_off_or_when_the_cdb_asks()
    {
        var disk = new RecordingDisk(ScsiHarness.DiskBytes);
        Use(d => { d.Add(disk); return [new ScsiLunDefinition(0, 0, disk, "REC")]; });
        _h.Run(Cdbs.Rw10(ScsiOp.Write10, 0, 1), dataOut: new byte[512]).AssertGood();
        _h.Run(Cdbs.Rw10(ScsiOp.Write10, 0, 1, flags: 0x08), dataOut: new byte[512]).AssertGood();
        _h.Run(ModeSelect10(28), dataOut: CachingSelectList(wce: false)).AssertGood();
        _h.Run(Cdbs.Rw10(ScsiOp.Write10, 0, 1), dataOut: new byte[512]).AssertGood();
        _h.Run(Cdbs.Rw16(ScsiOp.Write16, 0, 1), dataOut: new byte[512]).AssertGood();
        _h.Run(Cdbs.Rw10(ScsiOp.Read10, 0, 1), dataIn: 512).AssertGood();
        Assert.Equal(
            [(BlockOperation.Write, BlockRequestFlags.None), (BlockOperation.Write, BlockRequestFlags.Fua),
             (BlockOperation.Write, BlockRequestFlags.Fua), (BlockOperation.Write, BlockRequestFlags.Fua),
             (BlockOperation.Read, BlockRequestFlags.None)],
            disk.Requests.Select(r => (r.Operation, r.Flags)));
    }

    [Fact]
    public void Zeroing_write_same_is_fua_while_the_write_cache_is_off()
    {
        var disk = new RecordingDisk(ScsiHarness.DiskBytes);
        Use(d => { d.Add(disk); return [new ScsiLunDefinition(0, 0, disk, "REC")]; });
        _h.Run(Cdbs.Rw16(ScsiOp.WriteSame16, 0, 2), dataOut: new byte[512]).AssertGood();
        _h.Run(ModeSelect10(28), dataOut: CachingSelectList(wce: false)).AssertGood();
        _h.Run(Cdbs.Rw16(ScsiOp.WriteSame16, 0, 2), dataOut: new byte[512]).AssertGood();
        Assert.Equal(
            [(BlockOperation.WriteZeroes, BlockRequestFlags.None), (BlockOperation.WriteZeroes, BlockRequestFlags.Fua)],
            disk.Operations.Where(o => o.Operation == BlockOperation.WriteZeroes));
    }

    [Fact]
    public void Mode_select_refuses_changes_to_fixed_fields_saving_and_bad_lists()
    {
        _h.Run(ModeSelect10(28), dataOut: CachingSelectList(false, otherByte: 0x80)).AssertCheck(SenseCode.InvalidFieldInParameterList);
        _h.Run(ModeSelect10(28, flags: 0x11), dataOut: CachingSelectList(false)).AssertCheck(SenseCode.InvalidFieldInCdb);
        _h.Run(ModeSelect10(4), dataOut: new byte[4]).AssertCheck(SenseCode.ParameterListLengthError);
        var unknownPage = CachingSelectList(false);
        unknownPage[8] = 0x1c;
        _h.Run(ModeSelect10(28), dataOut: unknownPage).AssertCheck(SenseCode.InvalidFieldInParameterList);
        var truncatedPage = CachingSelectList(false)[..20];
        _h.Run(ModeSelect10(20), dataOut: truncatedPage).AssertCheck(SenseCode.ParameterListLengthError);
        var wrongBlockSize = new byte[8 + 8];
        wrongBlockSize[7] = 8;
        wrongBlockSize[8 + 6] = 0x10;                                           // 4096-byte blocks
        _h.Run(ModeSelect10(16), dataOut: wrongBlockSize).AssertCheck(SenseCode.InvalidFieldInParameterList);
        Assert.True(_h.Device.Luns[0].WriteCacheEnabled);
        _h.Run(Cdbs.Make(6, ScsiOp.ModeSelect6, c => { c[1] = 0x10; c[4] = 0; })).AssertGood();
    }

    [Fact]
    public void Report_luns_lists_every_lun_of_the_target_with_flat_addressing_above_255()
    {
        Use(d =>
        {
            var luns = new List<ScsiLunDefinition>();
            foreach (ushort lun in new ushort[] { 0, 7, 300 })
            {
                var disk = new RamDisk(1 << 20);
                d.Add(disk);
                luns.Add(new ScsiLunDefinition(0, lun, disk, $"L{lun}"));
            }
            var other = new RamDisk(1 << 20);
            d.Add(other);
            luns.Add(new ScsiLunDefinition(3, 0, other, "T3"));
            return luns;
        });
        var r = _h.Run(Cdbs.ReportLuns(), dataIn: 1024);
        r.AssertGood();
        Assert.Equal(24u, BinaryPrimitives.ReadUInt32BigEndian(r.Data));
        Assert.Equal(new byte[] { 0, 0, 0, 0, 0, 0, 0, 0 }, r.Data[8..16]);
        Assert.Equal(new byte[] { 0, 7, 0, 0, 0, 0, 0, 0 }, r.Data[16..24]);
        Assert.Equal(new byte[] { 0x41, 0x2c, 0, 0, 0, 0, 0, 0 }, r.Data[24..32]);
        _h.Run(Cdbs.Rw10(ScsiOp.Read10, 0, 1), dataIn: 512, lun: 300).AssertGood();
        // From a LUN that does not exist, and with the well-known-LUN selection.
        Assert.Equal(24u, BinaryPrimitives.ReadUInt32BigEndian(_h.Run(Cdbs.ReportLuns(), dataIn: 1024, lun: 5).Data));
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32BigEndian(_h.Run(Cdbs.ReportLuns(select: 1), dataIn: 1024).Data));
        Assert.Equal(8u, BinaryPrimitives.ReadUInt32BigEndian(_h.Run(Cdbs.ReportLuns(), dataIn: 1024, target: 3).Data));
        _h.Run(Cdbs.ReportLuns(allocation: 8), dataIn: 1024).AssertCheck(SenseCode.InvalidFieldInCdb);
        _h.Run(Cdbs.ReportLuns(select: 0x40), dataIn: 1024).AssertCheck(SenseCode.InvalidFieldInCdb);
    }

    [Fact]
    public void Missing_targets_get_bad_target_and_missing_luns_logical_unit_not_supported()
    {
        Assert.Equal(VirtioScsi.BadTarget, _h.Run(Cdbs.Make(6, ScsiOp.TestUnitReady), target: 9).Response);
        Assert.Equal(VirtioScsi.BadTarget, _h.Run(Cdbs.Make(6, ScsiOp.TestUnitReady), lunBytes: [2, 0, 0, 0, 0, 0, 0, 0]).Response);
        _h.Run(Cdbs.Make(6, ScsiOp.TestUnitReady), lun: 1).AssertCheck(SenseCode.LunNotSupported);
        _h.Run(Cdbs.Rw10(ScsiOp.Read10, 0, 1), dataIn: 512, lun: 1).AssertCheck(SenseCode.LunNotSupported);
        _h.Run(Cdbs.Make(6, ScsiOp.TestUnitReady), lunBytes: [1, 0, 0x80, 0, 0, 0, 0, 0]).AssertCheck(SenseCode.LunNotSupported);
        _h.Run(Cdbs.Make(6, ScsiOp.TestUnitReady), lunBytes: [1, 0, 0, 0, 0, 0, 0, 1]).AssertCheck(SenseCode.LunNotSupported);
        var inquiry = _h.Run(Cdbs.Inquiry(), dataIn: 96, lun: 1);
        inquiry.AssertGood();
        Assert.Equal(0x7f, inquiry.Data[0]);
        var sense = _h.Run(Cdbs.Make(6, ScsiOp.RequestSense, c => c[4] = 18), dataIn: 18, lun: 1);
        sense.AssertGood();
        Assert.Equal(0x25, sense.Data[12]);
    }

    [Fact]
    public void Request_sense_reports_no_sense_in_fixed_format_only()
    {
        var r = _h.Run(Cdbs.Make(6, ScsiOp.RequestSense, c => c[4] = 252), dataIn: 252);
        r.AssertGood();
        Assert.Equal(0x70, r.Data[0]);
        Assert.Equal(0, r.Data[2]);
        Assert.Equal(252u - 18, r.Resid);
        _h.Run(Cdbs.Make(6, ScsiOp.RequestSense, c => { c[1] = 1; c[4] = 252; }), dataIn: 252).AssertCheck(SenseCode.InvalidFieldInCdb);
    }

    [Fact]
    public void Start_stop_unit_is_accepted_but_not_eject()
    {
        _h.Run(Cdbs.Make(6, ScsiOp.StartStopUnit, c => c[4] = 1)).AssertGood();
        _h.Run(Cdbs.Make(6, ScsiOp.StartStopUnit, c => c[4] = 0)).AssertGood();
        _h.Run(Cdbs.Make(6, ScsiOp.StartStopUnit, c => c[4] = 2)).AssertCheck(SenseCode.InvalidFieldInCdb);
    }

    private static byte[] ReportOpcodes(byte options, byte opcode = 0, ushort serviceAction = 0, bool timeouts = false) =>
        Cdbs.Make(12, ScsiOp.MaintenanceIn, c =>
        {
            c[1] = ScsiOp.SaReportSupportedOpcodes;
            c[2] = (byte)((timeouts ? 0x80 : 0) | options);
            c[3] = opcode;
            BinaryPrimitives.WriteUInt16BigEndian(c.AsSpan(4), serviceAction);
            BinaryPrimitives.WriteUInt32BigEndian(c.AsSpan(6), 4096);
        });

    [Fact]
    public void Report_supported_operation_codes_lists_all_commands_and_answers_single_queries()
    {
        var all = _h.Run(ReportOpcodes(0), dataIn: 4096);
        all.AssertGood();
        int length = (int)BinaryPrimitives.ReadUInt32BigEndian(all.Data);
        Assert.Equal(SupportedOpcodes.Count * 8, length);
        var opcodes = Enumerable.Range(0, length / 8).Select(i => all.Data[4 + i * 8]).ToHashSet();
        Assert.Contains(ScsiOp.WriteSame16, opcodes);
        Assert.Contains(ScsiOp.Unmap, opcodes);
        Assert.Equal(SupportedOpcodes.Count * 20, (int)BinaryPrimitives.ReadUInt32BigEndian(_h.Run(ReportOpcodes(0, timeouts: true), dataIn: 4096).Data));

        var ws16 = _h.Run(ReportOpcodes(1, ScsiOp.WriteSame16), dataIn: 4096);
        Assert.Equal(3, ws16.Data[1] & 0x07);
        Assert.Equal(16, BinaryPrimitives.ReadUInt16BigEndian(ws16.Data.AsSpan(2)));
        Assert.Equal(ScsiOp.WriteSame16, ws16.Data[4]);
        Assert.Equal(1, _h.Run(ReportOpcodes(1, 0x8e), dataIn: 4096).Data[1] & 0x07);
        Assert.Equal(3, _h.Run(ReportOpcodes(2, ScsiOp.ServiceActionIn16, ScsiOp.SaReadCapacity16), dataIn: 4096).Data[1] & 0x07);
        Assert.Equal(1, _h.Run(ReportOpcodes(2, ScsiOp.ServiceActionIn16, 0x11), dataIn: 4096).Data[1] & 0x07);
        Assert.Equal(3, _h.Run(ReportOpcodes(3, ScsiOp.Inquiry), dataIn: 4096).Data[1] & 0x07);
        _h.Run(ReportOpcodes(1, ScsiOp.PersistentReserveIn), dataIn: 4096).AssertCheck(SenseCode.InvalidFieldInCdb);
        _h.Run(ReportOpcodes(2, ScsiOp.Inquiry), dataIn: 4096).AssertCheck(SenseCode.InvalidFieldInCdb);
        _h.Run(ReportOpcodes(5), dataIn: 4096).AssertCheck(SenseCode.InvalidFieldInCdb);
    }
}
