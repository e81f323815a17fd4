using BlkTarget.Storage;

namespace BlkTarget.Management;

/// <summary>A disk the target holds open: its spec, its backend and the exports that use it.</summary>
public sealed class ManagedDisk(DiskSpec spec, IBlockDevice backend)
{
    /// <summary>Replaced (under the model's lock) when a resize changes what the spec says, e.g. a RAM disk's size.</summary>
    public DiskSpec Spec { get; set; } = spec;
    public IBlockDevice Backend { get; } = backend;
    /// <summary>Names of the exports using this disk, in attach order.</summary>
    public List<string> AttachedTo { get; } = [];
}
