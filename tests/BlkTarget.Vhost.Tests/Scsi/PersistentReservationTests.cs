using System.Buffers.Binary;
using BlkTarget.Storage.Ram;
using BlkTarget.Vhost.Scsi;
using BlkTarget.Vhost.Scsi.Reservations;

namespace BlkTarget.Vhost.Tests.Scsi;

/// <summary>
/// PERSISTENT RESERVE IN/OUT (SPC-4 5.14, 6.15, 6.16) and RESERVATION CONFLICT (table 43, SBC-3 table 13) between
/// three I_T nexuses (A, B, C: three exports, one harness each) of one logical unit (one RAM disk, one
/// <see cref="SharedLogicalUnit"/>). Expected parameter data and sense bytes are written out.
/// </summary>
public sealed class PersistentReservationTests : IDisposable
{
    private readonly RamDisk _disk = new(ScsiHarness.DiskBytes);
    private readonly SharedLogicalUnit _lu;
    private readonly ScsiHarness _a, _b, _c;

    public PersistentReservationTests() : this(new SharedLogicalUnit("lu")) { }

    private PersistentReservationTests(SharedLogicalUnit lu)
    {
        _lu = lu;
        _a = Harness("export-a");
        _b = Harness("export-b");
        _c = Harness("export-c");
    }

    private ScsiHarness Harness(string name) => new(_ => [new ScsiLunDefinition(0, 0, _disk, "S", Shared: _lu)], name: name);

    public void Dispose()
    {
        _a.Dispose();
        _b.Dispose();
        _c.Dispose();
        _lu.Dispose();
        _disk.Dispose();
    }

    internal static byte[] PrIn(int action, ushort allocation = 512) => Cdbs.Make(10, ScsiOp.PersistentReserveIn, c =>
    {
        c[1] = (byte)action;
        BinaryPrimitives.WriteUInt16BigEndian(c.AsSpan(7), allocation);
    });

    internal static byte[] PrOut(int action, byte type = 0, uint length = 24, byte scope = 0) => Cdbs.Make(10, ScsiOp.PersistentReserveOut, c =>
    {
        c[1] = (byte)action;
        c[2] = (byte)(scope << 4 | type);
        BinaryPrimitives.WriteUInt32BigEndian(c.AsSpan(5), length);
    });

    internal static byte[] Parameters(ulong key, ulong serviceActionKey, byte flags = 0)
    {
        var p = new byte[24];
        BinaryPrimitives.WriteUInt64BigEndian(p, key);
        BinaryPrimitives.WriteUInt64BigEndian(p.AsSpan(8), serviceActionKey);
        p[20] = flags;
        return p;
    }

    private static ScsiResult Out(ScsiHarness h, int action, ulong key, ulong sark = 0, byte type = 0, byte flags = 0) =>
        h.Run(PrOut(action, type), dataOut: Parameters(key, sark, flags));

    private static void Good(ScsiResult r) => r.AssertGood();
    private static void Conflict(ScsiResult r) => Assert.Equal(ScsiStatus.ReservationConflict, r.Status);

    private static byte[] In(ScsiHarness h, int action)
    {
        var r = h.Run(PrIn(action), dataIn: 512);
        r.AssertGood();
        return r.Data[..(512 - (int)r.Resid)];
    }

    private static ScsiResult Write(ScsiHarness h) => h.Run(Cdbs.Rw10(ScsiOp.Write10, 8, 1), dataOut: new byte[512]);
    private static ScsiResult Read(ScsiHarness h) => h.Run(Cdbs.Rw10(ScsiOp.Read10, 8, 1), dataIn: 512);
    private static ScsiResult Tur(ScsiHarness h) => h.Run(Cdbs.Make(6, ScsiOp.TestUnitReady));

    private void RegisterAll()
    {
        Good(Out(_a, ReserveOutAction.Register, 0, 0xAAAA));
        Good(Out(_b, ReserveOutAction.RegisterAndIgnoreExistingKey, 0x9999, 0xBBBB));
    }

    [Fact]
    public void Nothing_registered_reads_as_generation_0_no_keys_no_reservation()
    {
        Assert.Equal(new byte[] { 0, 0, 0, 0, 0, 0, 0, 0 }, In(_a, ReserveInAction.ReadKeys));
        Assert.Equal(new byte[] { 0, 0, 0, 0, 0, 0, 0, 0 }, In(_a, ReserveInAction.ReadReservation));
        Assert.Equal(new byte[] { 0, 0, 0, 0, 0, 0, 0, 0 }, In(_a, ReserveInAction.ReadFullStatus));
        _a.Run(PrIn(4), dataIn: 64).AssertCheck(SenseCode.InvalidFieldInCdb);
    }

    [Fact]
    public void Report_capabilities_of_a_ram_disk_offers_all_six_types_and_no_ptpl()
    {
        // LENGTH 8; PTPL_C 0; TMV 1, ALLOW COMMANDS 001b, PTPL_A 0; WR_EX_AR EX_AC_RO WR_EX_RO EX_AC WR_EX; EX_AC_AR.
        Assert.Equal(new byte[] { 0x00, 0x08, 0x00, 0x90, 0xEA, 0x01, 0x00, 0x00 }, In(_a, ReserveInAction.ReportCapabilities));
        Out(_a, ReserveOutAction.Register, 0, 0xAAAA, flags: 0x01).AssertCheck(SenseCode.InvalidFieldInParameterList);
    }

    [Fact]
    public void Register_read_keys_change_key_and_unregister()
    {
        RegisterAll();
        Assert.Equal(new byte[] { 0, 0, 0, 2, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0xAA, 0xAA, 0, 0, 0, 0, 0, 0, 0xBB, 0xBB },
            In(_c, ReserveInAction.ReadKeys));
        Conflict(Out(_a, ReserveOutAction.Register, 0x1234, 0xA1));           // wrong key
        Conflict(Out(_c, ReserveOutAction.Register, 0x1234, 0xC1));           // unregistered with a key
        Good(Out(_c, ReserveOutAction.Register, 0, 0));                       // unregistering the unregistered: no change
        Good(Out(_a, ReserveOutAction.Register, 0xAAAA, 0xA1));
        Good(Out(_b, ReserveOutAction.Register, 0xBBBB, 0));
        Assert.Equal(new byte[] { 0, 0, 0, 4, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0xA1 }, In(_b, ReserveInAction.ReadKeys));
    }

    [Fact]
    public void Write_exclusive_lets_others_read_but_not_write()
    {
        RegisterAll();
        Conflict(Out(_c, ReserveOutAction.Reserve, 0, type: ReservationType.WriteExclusive));
        Good(Out(_a, ReserveOutAction.Reserve, 0xAAAA, type: ReservationType.WriteExclusive));
        // PRGENERATION 2 (RESERVE does not count), ADDITIONAL LENGTH 16, key, obsolete, reserved, SCOPE 0 | TYPE 1, obsolete.
        Assert.Equal(new byte[] { 0, 0, 0, 2, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0xAA, 0xAA, 0, 0, 0, 0, 0, 0x01, 0, 0 },
            In(_b, ReserveInAction.ReadReservation));
        Good(Write(_a));
        Conflict(Write(_b));
        Conflict(Write(_c));
        Good(Read(_b));
        Good(Read(_c));
        Good(_b.Run(Cdbs.ModeSense10(0x3f)));
        Conflict(_b.Run(Cdbs.Make(10, ScsiOp.SynchronizeCache10)));
        Conflict(Out(_b, ReserveOutAction.Reserve, 0xBBBB, type: ReservationType.WriteExclusive));
        Good(Out(_a, ReserveOutAction.Reserve, 0xAAAA, type: ReservationType.WriteExclusive));     // again: no change
        Conflict(Out(_a, ReserveOutAction.Reserve, 0xAAAA, type: ReservationType.ExclusiveAccess));
    }

    [Fact]
    public void Exclusive_access_refuses_reads_but_lets_status_commands_through()
    {
        RegisterAll();
        Good(Out(_a, ReserveOutAction.Reserve, 0xAAAA, type: ReservationType.ExclusiveAccess));
        Good(Read(_a));
        Conflict(Read(_b));
        Conflict(_b.Run(Cdbs.ModeSense10(0x3f), dataIn: 256));
        Good(Tur(_b));
        Good(_b.Run(Cdbs.Inquiry(), dataIn: 255));
        Good(_b.Run(Cdbs.ReadCapacity16(), dataIn: 32));
        Good(_c.Run(Cdbs.ReportLuns(), dataIn: 1024));
        Good(_c.Run(PrIn(ReserveInAction.ReadKeys), dataIn: 64));
    }

    [Theory]
    [InlineData(ReservationType.WriteExclusiveRegistrantsOnly, false)]
    [InlineData(ReservationType.ExclusiveAccessRegistrantsOnly, true)]
    [InlineData(ReservationType.WriteExclusiveAllRegistrants, false)]
    [InlineData(ReservationType.ExclusiveAccessAllRegistrants, true)]
    public void Registrants_types_give_every_registered_nexus_full_access(byte type, bool exclusiveAccess)
    {
        RegisterAll();
        Good(Out(_a, ReserveOutAction.Reserve, 0xAAAA, type: type));
        Good(Write(_b));
        Good(Read(_b));
        Conflict(Write(_c));
        Assert.Equal(exclusiveAccess ? ScsiStatus.ReservationConflict : ScsiStatus.Good, Read(_c).Status);
        // All-registrants: RESERVATION KEY 0; registrants-only: the holder's.
        var reservation = In(_c, ReserveInAction.ReadReservation);
        Assert.Equal(type, reservation[21]);
        Assert.Equal(ReservationType.IsAllRegistrants(type) ? 0UL : 0xAAAAUL, BinaryPrimitives.ReadUInt64BigEndian(reservation.AsSpan(8)));
    }

    [Fact]
    public void An_all_registrants_reservation_lasts_until_the_last_registrant_leaves()
    {
        RegisterAll();
        Good(Out(_b, ReserveOutAction.Reserve, 0xBBBB, type: ReservationType.ExclusiveAccessAllRegistrants));
        Good(Out(_a, ReserveOutAction.Reserve, 0xAAAA, type: ReservationType.ExclusiveAccessAllRegistrants));   // a holder too
        Good(Out(_b, ReserveOutAction.Register, 0xBBBB, 0));
        Assert.Equal(ReservationType.ExclusiveAccessAllRegistrants, In(_c, ReserveInAction.ReadReservation)[21]);
        Good(Out(_a, ReserveOutAction.Register, 0xAAAA, 0));
        Assert.Equal(new byte[] { 0, 0, 0, 4, 0, 0, 0, 0 }, In(_c, ReserveInAction.ReadReservation));
        Good(Read(_c));
    }

    [Fact]
    public void Release_by_a_non_holder_is_a_no_op_and_a_wrong_type_is_an_invalid_release()
    {
        RegisterAll();
        Good(Out(_a, ReserveOutAction.Reserve, 0xAAAA, type: ReservationType.WriteExclusive));
        Conflict(Out(_c, ReserveOutAction.Release, 0, type: ReservationType.WriteExclusive));
        Good(Out(_b, ReserveOutAction.Release, 0xBBBB, type: ReservationType.WriteExclusive));
        Assert.Equal(0x01, In(_b, ReserveInAction.ReadReservation)[21]);
        var wrong = Out(_a, ReserveOutAction.Release, 0xAAAA, type: ReservationType.ExclusiveAccess);
        Assert.Equal(ScsiStatus.CheckCondition, wrong.Status);
        Assert.Equal(new byte[] { 0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x26, 0x04, 0, 0, 0, 0 }, wrong.Sense[..18]);
        Good(Out(_a, ReserveOutAction.Release, 0xAAAA, type: ReservationType.WriteExclusive));
        Assert.Equal(new byte[] { 0, 0, 0, 2, 0, 0, 0, 0 }, In(_b, ReserveInAction.ReadReservation));
        Good(Write(_b));                                                      // no unit attention: WE is not a registrants type
    }

    [Fact]
    public void Releasing_a_registrants_only_reservation_is_a_unit_attention_for_the_other_registrants()
    {
        RegisterAll();
        Good(Out(_a, ReserveOutAction.Reserve, 0xAAAA, type: ReservationType.WriteExclusiveRegistrantsOnly));
        Good(Out(_a, ReserveOutAction.Release, 0xAAAA, type: ReservationType.WriteExclusiveRegistrantsOnly));
        Good(_b.Run(Cdbs.Inquiry(), dataIn: 255));                            // INQUIRY does not report it
        var ua = Tur(_b);
        Assert.Equal(ScsiStatus.CheckCondition, ua.Status);
        // UNIT ATTENTION, RESERVATIONS RELEASED (2Ah/04h), reported once.
        Assert.Equal(new byte[] { 0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x2A, 0x04, 0, 0, 0, 0 }, ua.Sense[..18]);
        Good(Tur(_b));
        Good(Tur(_a));
        Good(Tur(_c));
    }

    [Fact]
    public void Clear_removes_everything_and_others_see_reservations_preempted_through_request_sense()
    {
        RegisterAll();
        Good(Out(_a, ReserveOutAction.Reserve, 0xAAAA, type: ReservationType.ExclusiveAccess));
        Conflict(Out(_c, ReserveOutAction.Clear, 0));
        Good(Out(_b, ReserveOutAction.Clear, 0xBBBB));
        Assert.Equal(new byte[] { 0, 0, 0, 3, 0, 0, 0, 0 }, In(_b, ReserveInAction.ReadKeys));
        var sense = _a.Run(Cdbs.Make(6, ScsiOp.RequestSense, c => c[4] = 18), dataIn: 18);
        sense.AssertGood();
        Assert.Equal(new byte[] { 0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x2A, 0x03, 0, 0, 0, 0 }, sense.Data);
        Good(Read(_a));
    }

    [Fact]
    public void Preempt_takes_the_reservation_and_removes_the_holders_registration()
    {
        RegisterAll();
        Good(Out(_a, ReserveOutAction.Reserve, 0xAAAA, type: ReservationType.WriteExclusive));
        Conflict(Out(_b, ReserveOutAction.Preempt, 0xBBBB, 0x5555, type: ReservationType.ExclusiveAccess));   // no such key
        Out(_b, ReserveOutAction.Preempt, 0xBBBB, 0, type: ReservationType.ExclusiveAccess).AssertCheck(SenseCode.InvalidFieldInParameterList);
        Good(Out(_b, ReserveOutAction.Preempt, 0xBBBB, 0xAAAA, type: ReservationType.ExclusiveAccess));
        Assert.Equal(new byte[] { 0, 0, 0, 3, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0xBB, 0xBB, 0, 0, 0, 0, 0, 0x03, 0, 0 },
            In(_c, ReserveInAction.ReadReservation));
        var ua = Read(_a);
        Assert.Equal(new byte[] { 0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x2A, 0x05, 0, 0, 0, 0 }, ua.Sense[..18]);  // REGISTRATIONS PREEMPTED
        Conflict(Read(_a));
        Conflict(Out(_a, ReserveOutAction.Register, 0xAAAA, 0xA2));          // its key is gone
    }

    [Fact]
    public void Preempt_and_abort_completes_after_the_preempted_nexus_has_nothing_in_flight()
    {
        RegisterAll();
        Good(Out(_a, ReserveOutAction.Reserve, 0xAAAA, type: ReservationType.WriteExclusiveRegistrantsOnly));
        Good(Out(_b, ReserveOutAction.PreemptAndAbort, 0xBBBB, 0xAAAA, type: ReservationType.WriteExclusive));
        Assert.Equal(new byte[] { 0, 0, 0, 3, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0xBB, 0xBB }, In(_c, ReserveInAction.ReadKeys));
        _a.Run(PrIn(ReserveInAction.ReadKeys), dataIn: 64).AssertCheck(SenseCode.RegistrationsPreempted);   // PR IN reports it too
        Conflict(Write(_a));
    }

    [Fact]
    public void Read_full_status_names_each_initiator_port_with_a_sas_transport_id()
    {
        RegisterAll();
        Good(Out(_b, ReserveOutAction.Reserve, 0xBBBB, type: ReservationType.WriteExclusiveRegistrantsOnly));
        var d = In(_c, ReserveInAction.ReadFullStatus);
        Assert.Equal(8 + 2 * 48, d.Length);
        Assert.Equal(new byte[] { 0, 0, 0, 2, 0, 0, 0, 96 }, d[..8]);
        var a = _a.Device.Luns[0].Nexus;
        var b = _b.Device.Luns[0].Nexus;
        // key, reserved, ALL_TG_PT 0 | R_HOLDER, SCOPE|TYPE, reserved, RELATIVE TARGET PORT (export-a 1, export-b 2),
        // ADDITIONAL LENGTH 24, TransportID: FORMAT 00b | PROTOCOL 6h (SAS), reserved, SAS ADDRESS, reserved.
        byte[] Expected(ulong key, bool holder, ulong sas, byte port)
        {
            var e = new byte[48];
            BinaryPrimitives.WriteUInt64BigEndian(e, key);
            e[12] = (byte)(holder ? 1 : 0);
            e[13] = (byte)(holder ? 5 : 0);
            e[19] = port;
            e[23] = 24;
            e[24] = 0x06;
            BinaryPrimitives.WriteUInt64BigEndian(e.AsSpan(28), sas);
            return e;
        }
        Assert.Equal(Expected(0xAAAA, false, a.SasAddress, 1), d[8..56]);
        Assert.Equal(Expected(0xBBBB, true, b.SasAddress, 2), d[56..104]);
        Assert.Equal(0x3, (int)(a.SasAddress >> 60));
        Assert.NotEqual(a.SasAddress, b.SasAddress);
    }

    [Fact]
    public void Each_export_of_the_disk_is_a_target_port_of_its_own_in_vpd_83()
    {
        // The last designator of VPD 83h: code set binary, association target port, type 4h relative target port
        // identifier, length 4, reserved, port. Exports reach the shared disk as ports 1, 2, 3 (creation order); a
        // re-created export keeps its number.
        byte[] Port(ScsiHarness h)
        {
            var r = h.Run(Cdbs.Inquiry(evpd: true, page: 0x83), dataIn: 255);
            r.AssertGood();
            int length = 4 + (r.Data[2] << 8 | r.Data[3]);
            return r.Data[(length - 8)..length];
        }
        Assert.Equal(new byte[] { 0x01, 0x14, 0x00, 0x04, 0x00, 0x00, 0x00, 0x01 }, Port(_a));
        Assert.Equal(new byte[] { 0x01, 0x14, 0x00, 0x04, 0x00, 0x00, 0x00, 0x02 }, Port(_b));
        Assert.Equal(new byte[] { 0x01, 0x14, 0x00, 0x04, 0x00, 0x00, 0x00, 0x03 }, Port(_c));
        using var again = Harness("export-b");
        Assert.Equal(new byte[] { 0x01, 0x14, 0x00, 0x04, 0x00, 0x00, 0x00, 0x02 }, Port(again));
    }

    [Fact]
    public void A_reconnected_frontend_is_a_new_nexus_without_the_old_registration()
    {
        RegisterAll();
        Good(Out(_a, ReserveOutAction.Reserve, 0xAAAA, type: ReservationType.WriteExclusive));
        _a.Device.Connected(2);
        Conflict(Write(_a));
        Conflict(Out(_a, ReserveOutAction.Register, 0xAAAA, 0xA2));
        Good(Out(_a, ReserveOutAction.RegisterAndIgnoreExistingKey, 0, 0xA2));
        Good(Out(_a, ReserveOutAction.Preempt, 0xA2, 0xAAAA, type: ReservationType.WriteExclusive));
        Good(Write(_a));
        Assert.Equal(new byte[] { 0, 0, 0, 4, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0xBB, 0xBB, 0, 0, 0, 0, 0, 0, 0, 0xA2 }, In(_c, ReserveInAction.ReadKeys));
    }

    [Fact]
    public void Malformed_reserve_out_fails_with_the_right_sense()
    {
        _a.Run(PrOut(ReserveOutAction.RegisterAndMove), dataOut: Parameters(0, 1)).AssertCheck(SenseCode.InvalidFieldInCdb);
        _a.Run(PrOut(0x1f), dataOut: Parameters(0, 1)).AssertCheck(SenseCode.InvalidFieldInCdb);
        _a.Run(PrOut(ReserveOutAction.Register, length: 20), dataOut: Parameters(0, 1)).AssertCheck(SenseCode.ParameterListLengthError);
        Assert.Equal(VirtioScsi.Overrun, _a.Run(PrOut(ReserveOutAction.Register), dataOut: new byte[10]).Response);
        Out(_a, ReserveOutAction.Register, 0, 1, flags: 0x08).AssertCheck(SenseCode.InvalidFieldInParameterList);   // SPEC_I_PT
        Out(_a, ReserveOutAction.Register, 0, 1, flags: 0x04).AssertCheck(SenseCode.InvalidFieldInParameterList);   // ALL_TG_PT
        Good(Out(_a, ReserveOutAction.Register, 0, 1));
        _a.Run(PrOut(ReserveOutAction.Reserve, ReservationType.WriteExclusive, scope: 1), dataOut: Parameters(1, 0)).AssertCheck(SenseCode.InvalidFieldInCdb);
        Out(_a, ReserveOutAction.Reserve, 1, type: 2).AssertCheck(SenseCode.InvalidFieldInCdb);
        Out(_a, ReserveOutAction.Preempt, 1, 1, type: 0).AssertCheck(SenseCode.InvalidFieldInCdb);
    }

    [Fact]
    public void Registrations_are_limited_and_the_limit_is_reported_as_insufficient_resources()
    {
        var state = new PersistentReservationState();
        for (int i = 0; i < ReserveOutRules.MaxRegistrations; i++)
            Assert.Equal(ScsiStatus.Good, state.Apply(new ScsiNexus((ulong)i, 1, null), new ReserveOutRequest(0, 0, 0, 0, (ulong)i + 1, false, false, false), out _).Status);
        var full = state.Apply(new ScsiNexus(999, 1, null), new ReserveOutRequest(0, 0, 0, 0, 1000, false, false, false), out _);
        Assert.Equal(new SenseCode(0x05, 0x55, 0x04), full.Sense);
    }
}
