namespace BlkTarget.Vhost.Scsi;

/// <summary>
/// The LUNs of a virtio-scsi export at one moment: an immutable snapshot. Reactors read the current table with one
/// volatile load per command; hot-plug publishes a new one (copy on write), so lookups never lock.
/// </summary>
public sealed class ScsiLunTable
{
    private readonly ScsiTargetNode?[] _targets = new ScsiTargetNode?[256];

    public ScsiLunTable(IEnumerable<ScsiLun> luns)
    {
        Luns = luns.OrderBy(l => l.Target).ThenBy(l => l.Lun).ToArray();
        foreach (var group in Luns.GroupBy(l => l.Target))
            _targets[group.Key] = new ScsiTargetNode(group.Key, group.ToArray());
    }

    /// <summary>Every LUN, by target then LUN number.</summary>
    public IReadOnlyList<ScsiLun> Luns { get; }

    /// <summary>The target, or null when it has no LUN.</summary>
    public ScsiTargetNode? FindTarget(byte target) => _targets[target];

    public ScsiLun? Find(byte target, ushort lun) => _targets[target]?.Find(lun);
}
