using BlkTarget.Storage;
using BlkTarget.Vhost.Scsi;

namespace BlkTarget.Management;

/// <summary>A disk the target holds open: its spec, its backend, the SCSI logical unit state every export of it
/// shares (persistent reservations) and the exports that use it.</summary>
public sealed class ManagedDisk(DiskSpec spec, IBlockDevice backend, SharedLogicalUnit logicalUnit)
{
    /// <summary>Replaced (under the model's lock) when a resize changes what the spec says, e.g. a RAM disk's size.</summary>
    public DiskSpec Spec { get; set; } = spec;
    public IBlockDevice Backend { get; } = backend;
    /// <summary>Created once per disk and handed to every SCSI LUN that names it, so two exports of a shared disk
    /// (two I_T nexuses) see one reservation state.</summary>
    public SharedLogicalUnit LogicalUnit { get; } = logicalUnit;
    /// <summary>Names of the exports using this disk, in attach order.</summary>
    public List<string> AttachedTo { get; } = [];
    /// <summary>The disk's QoS limits as the data path applies them; every blk export of the disk holds this one.</summary>
    public Vhost.Qos.QosLimiter Qos { get; } = new();
}
