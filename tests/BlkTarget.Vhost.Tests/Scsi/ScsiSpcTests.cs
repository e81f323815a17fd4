using System.Buffers.Binary;
using BlkTarget.Vhost.Scsi;

namespace BlkTarget.Vhost.Tests.Scsi;

/// <summary>
/// SPC-4 / SBC-3 behaviour that sg3_utils checks: REPORT SUPPORTED OPERATION CODES for one command (SPC-4 6.35.3,
/// CDB usage data) and START STOP UNIT (SBC-3 5.25). Expected bytes are written out.
/// </summary>
public sealed class ScsiSpcTests : IDisposable
{
    private readonly ScsiHarness _h = new();

    public void Dispose() => _h.Dispose();

    private static byte[] ReportOne(byte options, byte opcode, ushort serviceAction = 0) =>
        Cdbs.Make(12, ScsiOp.MaintenanceIn, c =>
        {
            c[1] = ScsiOp.SaReportSupportedOpcodes;
            c[2] = options;
            c[3] = opcode;
            BinaryPrimitives.WriteUInt16BigEndian(c.AsSpan(4), serviceAction);
            c[9] = 64;
        });

    private byte[] Returned(byte[] cdb)
    {
        var r = _h.Run(cdb, dataIn: 64);
        r.AssertGood();
        return r.Data[..(64 - (int)r.Resid)];
    }

    // One-command parameter data: reserved, CTDP 0 | SUPPORT 011b (supported as the standard says), CDB SIZE, then
    // the CDB usage data: opcode, a 1 for each bit the device server evaluates, control byte 04h (NACA checked).
    public static TheoryData<byte, byte[]> UsageData => new()
    {
        { ScsiOp.Read10, [0x00, 0x03, 0x00, 0x0A, 0x28, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x04] },
        { ScsiOp.Write10, [0x00, 0x03, 0x00, 0x0A, 0x2A, 0xE8, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x04] },
        { ScsiOp.Read16, [0x00, 0x03, 0x00, 0x10, 0x88, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x04] },
        { ScsiOp.WriteSame16, [0x00, 0x03, 0x00, 0x10, 0x93, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x04] },
        { ScsiOp.WriteSame10, [0x00, 0x03, 0x00, 0x0A, 0x41, 0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x04] },
        { ScsiOp.Unmap, [0x00, 0x03, 0x00, 0x0A, 0x42, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0x04] },
        { ScsiOp.SynchronizeCache10, [0x00, 0x03, 0x00, 0x0A, 0x35, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x04] },
        { ScsiOp.Inquiry, [0x00, 0x03, 0x00, 0x06, 0x12, 0x03, 0xFF, 0xFF, 0xFF, 0x04] },
        { ScsiOp.ModeSense10, [0x00, 0x03, 0x00, 0x0A, 0x5A, 0x18, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0x04] },
        { ScsiOp.ReportLuns, [0x00, 0x03, 0x00, 0x0C, 0xA0, 0x00, 0xFF, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x04] },
        { ScsiOp.TestUnitReady, [0x00, 0x03, 0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04] },
        { ScsiOp.StartStopUnit, [0x00, 0x03, 0x00, 0x06, 0x1B, 0x01, 0x00, 0x00, 0xF7, 0x04] },
        { ScsiOp.Read6, [0x00, 0x03, 0x00, 0x06, 0x08, 0x1F, 0xFF, 0xFF, 0xFF, 0x04] },
    };

    [Theory]
    [MemberData(nameof(UsageData))]
    public void Cdb_usage_data_marks_only_the_bits_the_device_server_evaluates(byte opcode, byte[] expected)
    {
        Assert.Equal(expected, Returned(ReportOne(1, opcode)));
        Assert.Equal(expected, Returned(ReportOne(3, opcode)));
    }

    [Fact]
    public void Cdb_usage_data_of_commands_with_a_service_action()
    {
        byte[] readCapacity16 = [0x00, 0x03, 0x00, 0x10, 0x9E, 0x1F, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x04];
        Assert.Equal(readCapacity16, Returned(ReportOne(2, ScsiOp.ServiceActionIn16, ScsiOp.SaReadCapacity16)));
        Assert.Equal(readCapacity16, Returned(ReportOne(3, ScsiOp.ServiceActionIn16, ScsiOp.SaReadCapacity16)));
        byte[] reportOpcodes = [0x00, 0x03, 0x00, 0x0C, 0xA3, 0x1F, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x04];
        Assert.Equal(reportOpcodes, Returned(ReportOne(2, ScsiOp.MaintenanceIn, ScsiOp.SaReportSupportedOpcodes)));
        byte[] registerAndIgnore = [0x00, 0x03, 0x00, 0x0A, 0x5F, 0x1F, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x04];
        Assert.Equal(registerAndIgnore, Returned(ReportOne(2, ScsiOp.PersistentReserveOut, 6)));
        Assert.Equal([0x00, 0x01, 0x00, 0x00], Returned(ReportOne(2, ScsiOp.ServiceActionIn16, 0x11)));     // not supported
    }

    private static byte[] StartStop(byte byte4, bool immediate = false) =>
        Cdbs.Make(6, ScsiOp.StartStopUnit, c => { c[1] = immediate ? (byte)1 : (byte)0; c[4] = byte4; });

    /// <summary>NOT READY, LOGICAL UNIT NOT READY, INITIALIZING COMMAND REQUIRED.</summary>
    private static readonly SenseCode NotReady = new(0x02, 0x04, 0x02);

    private static readonly byte[] NotReadySense =
        [0x70, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0A, 0x00, 0x00, 0x00, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00, 0x00];

    [Fact]
    public void A_stopped_lun_refuses_media_access_with_not_ready_until_a_start()
    {
        var block = new byte[512];
        block.AsSpan().Fill(0x5A);
        _h.Run(Cdbs.Rw10(ScsiOp.Write10, 3, 1), dataOut: block).AssertGood();
        _h.Run(StartStop(0x00)).AssertGood();                                             // STOP (START 0, LOEJ 0)

        byte[][] media =
        [
            Cdbs.Make(6, ScsiOp.TestUnitReady),
            Cdbs.Rw10(ScsiOp.Read10, 3, 1), Cdbs.Rw16(ScsiOp.Read16, 3, 1), Cdbs.Rw6(ScsiOp.Read6, 3, 1), Cdbs.Rw12(ScsiOp.Read12, 3, 1),
            Cdbs.Make(10, ScsiOp.SynchronizeCache10), Cdbs.Make(16, ScsiOp.SynchronizeCache16),
            Cdbs.Unmap(24),
        ];
        foreach (var cdb in media)
        {
            var r = _h.Run(cdb, dataOut: cdb[0] == ScsiOp.Unmap ? Cdbs.UnmapParameters((3, 1)) : null, dataIn: 512);
            r.AssertCheck(NotReady);
            Assert.Equal(NotReadySense, r.Sense[..18]);
        }
        _h.Run(Cdbs.Rw10(ScsiOp.Write10, 3, 1), dataOut: new byte[512]).AssertCheck(NotReady);
        _h.Run(Cdbs.Rw16(ScsiOp.WriteSame16, 3, 1), dataOut: new byte[512]).AssertCheck(NotReady);
        _h.Run(Cdbs.Make(10, ScsiOp.WriteSame10, c => c[8] = 1), dataOut: new byte[512]).AssertCheck(NotReady);

        // What the standards let through a stopped LU.
        _h.Run(Cdbs.Inquiry(), dataIn: 96).AssertGood();
        _h.Run(Cdbs.Inquiry(evpd: true, page: 0x83), dataIn: 255).AssertGood();
        _h.Run(Cdbs.ReportLuns(), dataIn: 1024).AssertGood();
        _h.Run(Cdbs.ModeSense10(0x08), dataIn: 1024).AssertGood();
        _h.Run(Cdbs.ModeSense6(0x3f), dataIn: 255).AssertGood();
        _h.Run(Cdbs.ReadCapacity16(), dataIn: 32).AssertGood();
        _h.Run(Cdbs.Make(10, ScsiOp.ReadCapacity10), dataIn: 8).AssertGood();
        _h.Run(ReportOne(1, ScsiOp.Read10), dataIn: 64).AssertGood();
        var sense = _h.Run(Cdbs.Make(6, ScsiOp.RequestSense, c => c[4] = 18), dataIn: 18);
        sense.AssertGood();
        Assert.Equal(NotReadySense, sense.Data);                                        // SPC-4 6.39: the current state

        _h.Run(StartStop(0x01)).AssertGood();                                             // START
        _h.Run(Cdbs.Make(6, ScsiOp.TestUnitReady)).AssertGood();
        var read = _h.Run(Cdbs.Rw10(ScsiOp.Read10, 3, 1), dataIn: 512);
        read.AssertGood();
        Assert.Equal(block, read.Data);
        byte[] noSense = [0x70, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0A, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00];
        Assert.Equal(noSense, _h.Run(Cdbs.Make(6, ScsiOp.RequestSense, c => c[4] = 18), dataIn: 18).Data);
    }

    [Fact]
    public void Start_stop_unit_with_immed_no_flush_and_power_conditions()
    {
        _h.Run(StartStop(0x00, immediate: true)).AssertGood();
        _h.Run(Cdbs.Make(6, ScsiOp.TestUnitReady)).AssertCheck(NotReady);
        _h.Run(StartStop(0x01, immediate: true)).AssertGood();
        _h.Run(Cdbs.Make(6, ScsiOp.TestUnitReady)).AssertGood();
        _h.Run(StartStop(0x04)).AssertGood();                                             // STOP, NO_FLUSH
        _h.Run(Cdbs.Make(6, ScsiOp.TestUnitReady)).AssertCheck(NotReady);
        // A power condition ignores START and LOEJ (SBC-3 5.25): STANDBY with START 1 does not start the LU.
        _h.Run(StartStop(0x31)).AssertGood();
        _h.Run(Cdbs.Make(6, ScsiOp.TestUnitReady)).AssertCheck(NotReady);
        _h.Run(StartStop(0x12)).AssertGood();                                             // ACTIVE, LOEJ ignored
        _h.Run(StartStop(0x41)).AssertCheck(SenseCode.InvalidFieldInCdb);                 // reserved power condition
        _h.Run(StartStop(0x03)).AssertCheck(SenseCode.InvalidFieldInCdb);                 // load: no removable medium
        _h.Run(StartStop(0x02)).AssertCheck(SenseCode.InvalidFieldInCdb);                 // eject
        _h.Run(StartStop(0x01)).AssertGood();
        _h.Run(Cdbs.Make(6, ScsiOp.TestUnitReady)).AssertGood();
    }

    [Fact]
    public void A_device_reset_starts_a_stopped_lun_again()
    {
        _h.Run(StartStop(0x00)).AssertGood();
        _h.Run(Cdbs.Make(6, ScsiOp.TestUnitReady)).AssertCheck(NotReady);
        _h.Device.Reset();
        _h.Run(Cdbs.Make(6, ScsiOp.TestUnitReady)).AssertGood();
    }
}
