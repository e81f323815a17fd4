using BlkTarget.Storage;

namespace BlkTarget.Vhost.Blk;

/// <summary>How one vhost-user-blk export presents its backend to the guest.</summary>
public sealed record BlkOptions
{
    public int Queues { get; init; } = 1;
    /// <summary>Serial returned by GET_ID (at most 20 bytes are sent).</summary>
    public string Serial { get; init; } = "blktarget";
    /// <summary>Data segments per request we accept (virtio seg_max).</summary>
    public uint SegMax { get; init; } = 126;
    /// <summary>Largest single segment (virtio size_max).</summary>
    public uint SizeMax { get; init; } = 1u << 20;
    /// <summary>Ranges per DISCARD / WRITE_ZEROES request.</summary>
    public uint MaxRangeSegments { get; init; } = 32;
    /// <summary>Sectors per DISCARD / WRITE_ZEROES range.</summary>
    public uint MaxRangeSectors { get; init; } = (1u << 30) / VirtioBlk.SectorSize;
    /// <summary>Whether the guest sees a volatile write cache initially (virtio-blk writeback byte).</summary>
    public bool WriteCache { get; init; } = true;
    /// <summary>QoS limits of this export (every queue shares them); null: none, ever.</summary>
    public Qos.QosLimiter? ExportQos { get; init; }
    /// <summary>QoS limits of the disk behind it (every export of the disk shares them); null: none, ever.</summary>
    public Qos.QosLimiter? DiskQos { get; init; }

    public static void Validate(BlkOptions options, BlockDeviceInfo info)
    {
        if (options.Queues is < 1 or > 256) throw new ArgumentException($"queue count {options.Queues} must be between 1 and 256");
        if (info.SizeBytes % VirtioBlk.SectorSize != 0) throw new ArgumentException("device size must be a multiple of 512 bytes");
    }
}
