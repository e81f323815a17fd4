using System.Buffers.Binary;
using BlkTarget.Vhost.Scsi.Reservations;

namespace BlkTarget.Vhost.Scsi;

/// <summary>
/// PERSISTENT RESERVE IN and OUT (SPC-4 6.15, 6.16) over a logical unit's <see cref="PersistentReservationState"/>,
/// for the I_T nexus the command came on.
/// </summary>
public static class PersistentReservations
{
    /// <summary>Bytes of one READ FULL STATUS descriptor: 24 of header and a 24-byte SAS TransportID.</summary>
    public const int FullStatusDescriptorLength = 48;
    /// <summary>Largest PERSISTENT RESERVE IN answer (READ FULL STATUS with every registration).</summary>
    public const int MaxInLength = 8 + ReserveOutRules.MaxRegistrations * FullStatusDescriptorLength;

    /// <summary>
    /// READ KEYS (6.15.2): PRGENERATION, ADDITIONAL LENGTH, then each reservation key (8 bytes). READ RESERVATION
    /// (6.15.3): PRGENERATION, ADDITIONAL LENGTH 0 or 16, then RESERVATION KEY, SCOPE|TYPE at byte 21. REPORT
    /// CAPABILITIES (6.15.4): LENGTH 8, PTPL_C (file and image disks), TMV 1, ALLOW COMMANDS 001b, PTPL_A, the type
    /// mask of all six types. READ FULL STATUS (6.15.5): a descriptor per registration (key, ALL_TG_PT 0, R_HOLDER,
    /// SCOPE|TYPE when holding, RELATIVE TARGET PORT IDENTIFIER, a SAS TransportID naming the initiator port). The
    /// answer is cut to ALLOCATION LENGTH (bytes 7-8). Other service actions: INVALID FIELD IN CDB.
    /// </summary>
    public static void In(ref ScsiTask task, PersistentReservationState state)
    {
        var cdb = task.Cdb;
        var s = state.Current;
        var d = task.Scratch;
        int length;
        switch (cdb[1] & 0x1f)
        {
            case ReserveInAction.ReadKeys:
                length = 8;
                foreach (var r in s.Registrations)
                {
                    BinaryPrimitives.WriteUInt64BigEndian(d[length..], r.Key);
                    length += 8;
                }
                break;
            case ReserveInAction.ReadReservation:
                length = 8;
                if (s.Reserved)
                {
                    d[8..24].Clear();
                    BinaryPrimitives.WriteUInt64BigEndian(d[8..], s.ReservationKey);
                    d[21] = s.Type;                                   // SCOPE 0h (LU_SCOPE)
                    length = 24;
                }
                break;
            case ReserveInAction.ReportCapabilities:
                d[..8].Clear();
                d[1] = 8;
                d[2] = (byte)(state.PersistenceAvailable ? 0x01 : 0x00);   // PTPL_C
                d[3] = (byte)(0x80 | 0x10 | (s.Aptpl ? 0x01 : 0x00));      // TMV, ALLOW COMMANDS 001b, PTPL_A
                d[4] = 0xea;                                               // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX
                d[5] = 0x01;                                               // EX_AC_AR
                task.ReturnData(d[..8], Cdb.U16(cdb, 7));
                return;
            case ReserveInAction.ReadFullStatus:
                length = 8;
                foreach (var r in s.Registrations)
                {
                    WriteFullStatus(d.Slice(length, FullStatusDescriptorLength), r, s);
                    length += FullStatusDescriptorLength;
                }
                break;
            default:
                task.Fail(SenseCode.InvalidFieldInCdb);
                return;
        }
        BinaryPrimitives.WriteUInt32BigEndian(d, s.Generation);
        BinaryPrimitives.WriteUInt32BigEndian(d[4..], (uint)(length - 8));
        task.ReturnData(d[..length], Cdb.U16(cdb, 7));
    }

    private static void WriteFullStatus(Span<byte> d, Registration r, ReservationSnapshot s)
    {
        d.Clear();
        BinaryPrimitives.WriteUInt64BigEndian(d, r.Key);
        if (s.IsHolder(r.Nexus))
        {
            d[12] = 0x01;                                             // R_HOLDER
            d[13] = s.Type;                                           // SCOPE 0h
        }
        BinaryPrimitives.WriteUInt16BigEndian(d[18..], r.Nexus.RelativeTargetPort);
        BinaryPrimitives.WriteUInt32BigEndian(d[20..], 24);           // ADDITIONAL DESCRIPTOR LENGTH
        d[24] = 0x06;                                                 // FORMAT CODE 00b, PROTOCOL IDENTIFIER 6h (SAS)
        BinaryPrimitives.WriteUInt64BigEndian(d[28..], r.Nexus.SasAddress);
    }

    /// <summary>
    /// PERSISTENT RESERVE OUT: REGISTER, RESERVE, RELEASE, CLEAR, PREEMPT, PREEMPT AND ABORT, REGISTER AND IGNORE
    /// EXISTING KEY with the 24-byte parameter list (PARAMETER LIST LENGTH other than 24: PARAMETER LIST LENGTH ERROR;
    /// REGISTER AND MOVE and reserved actions: INVALID FIELD IN CDB). The transition itself is
    /// <see cref="ReserveOutRules.Apply"/>. With APTPL, or for PREEMPT AND ABORT, the command completes once
    /// <see cref="ReserveOutCompletion"/> ran on the logical unit's helper thread.
    /// </summary>
    public static void Out(ref ScsiTask task, SharedLogicalUnit lu, ScsiNexus nexus)
    {
        var cdb = task.Cdb;
        int action = cdb[1] & 0x1f;
        if (action > ReserveOutAction.RegisterAndIgnoreExistingKey)
        {
            task.Fail(SenseCode.InvalidFieldInCdb);
            return;
        }
        uint length = Cdb.U32(cdb, 5);
        if (length != ReserveOutRequest.ParameterListLength)
        {
            task.Fail(SenseCode.ParameterListLengthError);
            return;
        }
        if (!task.TryReadParameters(length, out var parameters)) return;
        var request = ReserveOutRequest.Decode(cdb, parameters);
        var outcome = lu.Reservations.Apply(nexus, request, out bool persist);
        if (outcome.Status == ScsiStatus.CheckCondition)
        {
            task.Fail(outcome.Sense);
            return;
        }
        task.Status = outcome.Status;
        if (outcome.Status == ScsiStatus.Good && (persist || outcome.Aborted.Count > 0))
            task.SubmitBlocking(lu.Jobs, new ReserveOutCompletion(lu.Reservations, outcome.Aborted, persist));
    }
}
