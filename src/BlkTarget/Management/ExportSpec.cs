namespace BlkTarget.Management;

/// <summary>One LUN of a SCSI export: its address and the disk behind it.</summary>
public sealed record ScsiLunSpec
{
    /// <summary>0-255.</summary>
    public int Target { get; init; }
    /// <summary>0-16383.</summary>
    public int Lun { get; init; }
    public required string Disk { get; init; }
    /// <summary>VPD page 80h serial (at most 64 printable ASCII characters); empty: derived from the export's.</summary>
    public string Serial { get; init; } = "";
    public bool WriteCache { get; init; } = true;
}

/// <summary>
/// An export (SPDK's vhost controller): a vhost-user device on a Unix socket naming its disk(s). Kind "blk"
/// names one <see cref="Disk"/>; kind "scsi" has <see cref="Luns"/>.
/// </summary>
public sealed record ExportSpec
{
    /// <summary>Unique name, same rules as disk names.</summary>
    public required string Name { get; init; }
    /// <summary>"blk" or "scsi".</summary>
    public string Kind { get; init; } = "blk";
    /// <summary>Unix socket path QEMU connects to (at most 107 bytes; its directory must exist).</summary>
    public required string Socket { get; init; }
    /// <summary>Kind blk: the disk exported.</summary>
    public string? Disk { get; init; }
    /// <summary>Virtqueues (blk, 1-256) or request queues (scsi, 1-254).</summary>
    public int Queues { get; init; } = 1;
    /// <summary>Serial the guest sees (blk: at most 20 characters); empty: the export's name.</summary>
    public string Serial { get; init; } = "";
    /// <summary>The guest sees a volatile write cache (blk).</summary>
    public bool WriteCache { get; init; } = true;
    public IReadOnlyList<ScsiLunSpec> Luns { get; init; } = [];
    /// <summary>IOPS and bandwidth limits shared by all the export's queues (qos_set changes them at run time).</summary>
    public Vhost.Qos.QosLimits Qos { get; init; } = Vhost.Qos.QosLimits.None;

    /// <summary>The serial actually used: <see cref="Serial"/>, or the name when empty.</summary>
    public string EffectiveSerial => Serial.Length > 0 ? Serial : Name;

    /// <summary>Every disk this export uses.</summary>
    public IEnumerable<string> DiskNames => Kind == "scsi" ? Luns.Select(l => l.Disk) : [Disk!];
}
