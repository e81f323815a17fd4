using System.Buffers.Binary;

namespace BlkTarget.Vhost.Scsi.Reservations;

/// <summary>
/// A decoded PERSISTENT RESERVE OUT (SPC-4 6.16): service action, SCOPE and TYPE from the CDB, then the 24-byte basic
/// parameter list (6.16.3, table 216): RESERVATION KEY (bytes 0-7), SERVICE ACTION RESERVATION KEY (8-15), obsolete
/// (16-19), SPEC_I_PT (byte 20 bit 3), ALL_TG_PT (bit 2), APTPL (bit 0).
/// </summary>
public readonly record struct ReserveOutRequest(int Action, byte Scope, byte Type, ulong Key, ulong ServiceActionKey,
    bool SpecifyInitiatorPorts, bool AllTargetPorts, bool Aptpl)
{
    /// <summary>Parameter list length every service action but REGISTER AND MOVE uses (SPEC_I_PT 0).</summary>
    public const int ParameterListLength = 24;

    /// <summary>Decodes the CDB (10 bytes) and a parameter list of <see cref="ParameterListLength"/> bytes.</summary>
    public static ReserveOutRequest Decode(ReadOnlySpan<byte> cdb, ReadOnlySpan<byte> parameters) => new(
        cdb[1] & 0x1f, (byte)(cdb[2] >> 4), (byte)(cdb[2] & 0x0f),
        BinaryPrimitives.ReadUInt64BigEndian(parameters),
        BinaryPrimitives.ReadUInt64BigEndian(parameters[8..]),
        (parameters[20] & 0x08) != 0, (parameters[20] & 0x04) != 0, (parameters[20] & 0x01) != 0);
}

/// <summary>A unit attention to establish for an I_T nexus once the new state is published.</summary>
public readonly record struct PendingAttention(ScsiNexus Nexus, SenseCode Sense);

/// <summary>What a PERSISTENT RESERVE OUT does: its status (and sense), and on success the new state (null: no
/// change), unit attentions for other nexuses, and for PREEMPT AND ABORT the nexuses whose commands are aborted.</summary>
public sealed record ReserveOutOutcome(byte Status, SenseCode Sense, ReservationSnapshot? NewState,
    IReadOnlyList<PendingAttention> Attentions, IReadOnlyList<ScsiNexus> Aborted)
{
    public static readonly ReserveOutOutcome Conflict = new(ScsiStatus.ReservationConflict, default, null, [], []);
    public static readonly ReserveOutOutcome Unchanged = new(ScsiStatus.Good, default, null, [], []);

    public static ReserveOutOutcome Check(SenseCode sense) => new(ScsiStatus.CheckCondition, sense, null, [], []);

    public static ReserveOutOutcome Changed(ReservationSnapshot state, List<PendingAttention>? attentions = null, List<ScsiNexus>? aborted = null) =>
        new(ScsiStatus.Good, default, state, attentions ?? [], aborted ?? []);
}
