using BlkTarget.Storage;

namespace BlkTarget.Vhost.Scsi;

/// <summary>One LUN of a virtio-scsi export: where it is addressed, the backend behind it and the logical unit state
/// it shares with every other export of the same disk (<see cref="SharedLogicalUnit"/>; null: a private one).</summary>
public sealed record ScsiLunDefinition(byte Target, ushort Lun, IBlockDevice Backend, string Serial, bool WriteCache = true,
    SharedLogicalUnit? Shared = null, Qos.QosLimiter? DiskQos = null);

/// <summary>How one vhost-user-scsi export presents itself to the guest.</summary>
public sealed record ScsiOptions
{
    public const int MaxLun = 16383;

    /// <summary>Request queues (virtio-scsi num_queues); the device has two more (control, event).</summary>
    public int RequestQueues { get; init; } = 1;
    public uint SegMax { get; init; } = 126;
    /// <summary>Largest transfer per command in 512-byte sectors (config max_sectors).</summary>
    public uint MaxSectors { get; init; } = 0xffff;
    public uint CmdPerLun { get; init; } = 128;
    /// <summary>QoS limits of this export (every request queue shares them); null: none, ever.</summary>
    public Qos.QosLimiter? ExportQos { get; init; }

    public static void Validate(ScsiOptions options, IReadOnlyList<ScsiLunDefinition> luns)
    {
        if (options.RequestQueues is < 1 or > 254) throw new ArgumentException($"request queue count {options.RequestQueues} must be between 1 and 254");
        if (luns.Count == 0) throw new ArgumentException("a SCSI device needs at least one LUN");
        var seen = new HashSet<(byte, ushort)>();
        foreach (var l in luns)
        {
            if (l.Lun > MaxLun) throw new ArgumentException($"LUN {l.Lun} is above {MaxLun}");
            if (!seen.Add((l.Target, l.Lun))) throw new ArgumentException($"target {l.Target} LUN {l.Lun} is defined twice");
            if (l.Backend.Info.SizeBytes == 0 || l.Backend.Info.SizeBytes % l.Backend.Info.BlockSize != 0)
                throw new ArgumentException($"target {l.Target} LUN {l.Lun}: size must be a positive multiple of the block size");
        }
    }
}
