namespace BlkTarget.Vhost.Scsi.Reservations;

/// <summary>One registration: an I_T nexus and its reservation key (SPC-4 5.14.7).</summary>
public sealed record Registration(ulong Key, ScsiNexus Nexus);

/// <summary>
/// The persistent reservation state of a logical unit at one moment (SPC-4 5.14): PRgeneration, registrations in
/// the order they were made, the reservation (TYPE, holder; scope is always LU_SCOPE) and APTPL. Immutable: a PERSISTENT
/// RESERVE OUT builds a new one and publishes it; the data path reads the current one with one volatile load and
/// checks it without locks or allocation.
/// </summary>
public sealed class ReservationSnapshot
{
    public static readonly ReservationSnapshot Empty = new(0, [], ReservationType.None, null, false);

    public ReservationSnapshot(uint generation, Registration[] registrations, byte type, ScsiNexus? holder, bool aptpl)
    {
        Generation = generation;
        Registrations = registrations;
        Type = type;
        Holder = ReservationType.IsAllRegistrants(type) ? null : holder;
        Aptpl = aptpl;
    }

    /// <summary>PRgeneration: a 32-bit wrapping counter of REGISTER, REGISTER AND IGNORE EXISTING KEY, CLEAR, PREEMPT
    /// and PREEMPT AND ABORT that changed something (SPC-4 6.15.2).</summary>
    public uint Generation { get; }
    public Registration[] Registrations { get; }
    /// <summary><see cref="ReservationType"/>; <see cref="ReservationType.None"/> when there is no reservation.</summary>
    public byte Type { get; }
    /// <summary>The holder of a non all-registrants reservation; null otherwise.</summary>
    public ScsiNexus? Holder { get; }
    /// <summary>Activate Persist Through Power Loss: the state is written to the sidecar file and restored at start.</summary>
    public bool Aptpl { get; }

    public bool Reserved => Type != ReservationType.None;

    /// <summary>Index of <paramref name="nexus"/>'s registration, -1 when it has none.</summary>
    public int IndexOf(ScsiNexus nexus)
    {
        var r = Registrations;
        for (int i = 0; i < r.Length; i++)
            if (ReferenceEquals(r[i].Nexus, nexus)) return i;
        return -1;
    }

    /// <summary>Whether <paramref name="nexus"/> holds the reservation (any registrant does for all-registrants types).</summary>
    public bool IsHolder(ScsiNexus nexus) => Reserved && (ReservationType.IsAllRegistrants(Type) ? IndexOf(nexus) >= 0 : ReferenceEquals(Holder, nexus));

    /// <summary>The reservation key READ RESERVATION reports: the holder's, 0 for all-registrants types.</summary>
    public ulong ReservationKey
    {
        get
        {
            if (Holder is null) return 0;
            int i = IndexOf(Holder);
            return i < 0 ? 0 : Registrations[i].Key;
        }
    }

    /// <summary>
    /// Whether the command in <paramref name="cdb"/> from <paramref name="nexus"/> is refused with RESERVATION
    /// CONFLICT (SPC-4 5.14.3 table 43, SBC-3 4.17 table 13): never without a reservation or for commands always
    /// allowed; for the holder (and, with registrants-only and all-registrants types, any registered nexus) never;
    /// otherwise reads conflict only under exclusive access types and everything else conflicts.
    /// </summary>
    public bool Conflicts(ScsiNexus nexus, ReadOnlySpan<byte> cdb)
    {
        if (!Reserved) return false;
        var access = ReservationAccess.Classify(cdb);
        if (access == CommandAccess.Always) return false;
        if (ReservationType.RegistrantsHaveAccess(Type) ? IndexOf(nexus) >= 0 : ReferenceEquals(Holder, nexus)) return false;
        return access == CommandAccess.Write || ReservationType.IsExclusiveAccess(Type);
    }
}

/// <summary>How a command fares under a reservation it does not hold.</summary>
public enum CommandAccess
{
    /// <summary>Allowed whatever the reservation.</summary>
    Always,
    /// <summary>Reads the medium or the LU's state: allowed under write exclusive types, conflicts under exclusive access.</summary>
    Read,
    /// <summary>Changes the medium or the LU's state: conflicts.</summary>
    Write,
}

/// <summary>The commands BlkTarget supports sorted into the rows of SPC-4 table 43 and SBC-3 table 13.</summary>
public static class ReservationAccess
{
    /// <summary>
    /// Always: TEST UNIT READY, INQUIRY, REQUEST SENSE, REPORT LUNS, READ CAPACITY(10/16), PERSISTENT RESERVE IN and
    /// OUT (OUT has its own rules per service action, SPC-4 table 44), START STOP UNIT with START 1 and POWER
    /// CONDITION 0. Read: READ(6/10/12/16), MODE SENSE(6/10), REPORT SUPPORTED OPERATION CODES. Write: everything
    /// else (WRITE, WRITE SAME, UNMAP, COMPARE AND WRITE, SYNCHRONIZE CACHE, MODE SELECT, stopping START STOP UNIT,
    /// unknown opcodes).
    /// </summary>
    public static CommandAccess Classify(ReadOnlySpan<byte> cdb) => cdb[0] switch
    {
        ScsiOp.TestUnitReady or ScsiOp.Inquiry or ScsiOp.RequestSense or ScsiOp.ReportLuns or ScsiOp.ReadCapacity10
            or ScsiOp.PersistentReserveIn or ScsiOp.PersistentReserveOut => CommandAccess.Always,
        ScsiOp.ServiceActionIn16 when (cdb[1] & 0x1f) == ScsiOp.SaReadCapacity16 => CommandAccess.Always,
        ScsiOp.StartStopUnit when cdb.Length >= 5 && (cdb[4] & 0xf1) == 0x01 => CommandAccess.Always,
        ScsiOp.Read6 or ScsiOp.Read10 or ScsiOp.Read12 or ScsiOp.Read16 or ScsiOp.ModeSense6 or ScsiOp.ModeSense10
            or ScsiOp.MaintenanceIn => CommandAccess.Read,
        _ => CommandAccess.Write,
    };
}
