namespace BlkTarget.Vhost.Scsi.Reservations;

/// <summary>
/// One I_T nexus as a logical unit sees it (SAM-5 4.7: an initiator port and a target port): here, one vhost-user
/// frontend connection to one export, for one LUN. A reconnecting frontend is a new nexus; the registrations of the
/// old one stay (SPC-4: registrations survive I_T nexus loss) until preempted or cleared. Registrations refer to the
/// nexus by reference, so a nexus restored from an APTPL sidecar file never matches a live one.
/// <para>The initiator port is named by a 64-bit SAS address (NAA 3, locally assigned, hashed from the export,
/// session and process start), reported in READ FULL STATUS as a SAS TransportID (protocol identifier 6h), as the
/// Linux vhost-scsi fabric names its naa. initiator ports.</para>
/// </summary>
public sealed class ScsiNexus
{
    private static readonly long ProcessStart = Environment.TickCount64 ^ DateTime.UtcNow.Ticks;
    private int _unitAttention;
    private volatile ScsiLun? _lun;

    public ScsiNexus(ulong sasAddress, ushort relativeTargetPort, ScsiLun? lun)
    {
        SasAddress = sasAddress;
        RelativeTargetPort = relativeTargetPort;
        _lun = lun;
    }

    /// <summary>A live nexus: session <paramref name="session"/> (1, 2, ... per export; 0 before any connection) of
    /// export <paramref name="export"/> on <paramref name="lun"/>.</summary>
    public static ScsiNexus ForSession(string export, int session, ScsiLun lun) =>
        new(ScsiLun.MakeNaa($"{export}/session/{session}/{ProcessStart}"), lun.RelativeTargetPort, lun);

    /// <summary>The initiator port's SAS address (the TransportID's SAS ADDRESS field).</summary>
    public ulong SasAddress { get; }
    /// <summary>RELATIVE TARGET PORT IDENTIFIER of the export (<see cref="ScsiLun.RelativeTargetPort"/>).</summary>
    public ushort RelativeTargetPort { get; }
    /// <summary>The LUN this nexus reaches the logical unit through, whose in-flight count PREEMPT AND ABORT waits
    /// for; null for a nexus restored from a sidecar file or whose connection ended (nothing in flight).</summary>
    public ScsiLun? Lun => _lun;

    /// <summary>The connection ended (a new frontend took the export): the LUN's commands are no longer this nexus's.</summary>
    public void Detach() => _lun = null;

    /// <summary>"naa.3xxxxxxxxxxxxxxx", for logs and the sidecar file.</summary>
    public string Name => $"naa.{SasAddress:x16}";

    /// <summary>Whether a unit attention is pending (one volatile read; data path).</summary>
    public bool HasUnitAttention => Volatile.Read(ref _unitAttention) != 0;

    /// <summary>Establishes a unit attention condition (SPC-4 5.14.11: RESERVATIONS PREEMPTED / RELEASED,
    /// REGISTRATIONS PREEMPTED). One is kept: a newer one replaces an older one not yet reported.</summary>
    public void RaiseUnitAttention(SenseCode sense) => Volatile.Write(ref _unitAttention, Encode(sense));

    /// <summary>Reports and clears the pending unit attention; <see cref="SenseCode.None"/> when there is none.</summary>
    public SenseCode TakeUnitAttention()
    {
        int code = Interlocked.Exchange(ref _unitAttention, 0);
        return code == 0 ? SenseCode.None : new SenseCode((byte)(code >> 16), (byte)(code >> 8), (byte)code);
    }

    private static int Encode(SenseCode s) => s.Key << 16 | s.Asc << 8 | s.Ascq;
}
