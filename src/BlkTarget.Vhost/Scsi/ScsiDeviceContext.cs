namespace BlkTarget.Vhost.Scsi;

/// <summary>What every queue of one virtio-scsi export shares: targets and LUNs, options, config space.</summary>
public sealed class ScsiDeviceContext
{
    private readonly ScsiTargetNode?[] _targets = new ScsiTargetNode?[256];

    public ScsiDeviceContext(string name, IReadOnlyList<ScsiLunDefinition> definitions, ScsiOptions options)
    {
        ScsiOptions.Validate(options, definitions);
        Name = name;
        Options = options;
        var luns = new List<ScsiLun>();
        foreach (var group in definitions.GroupBy(d => d.Target).OrderBy(g => g.Key))
        {
            var ordered = group.OrderBy(d => d.Lun).ToArray();
            var members = new ScsiLun[ordered.Length];
            for (int i = 0; i < ordered.Length; i++)
            {
                var d = ordered[i];
                members[i] = new ScsiLun(luns.Count + i, d.Target, d.Lun, d.Backend, name, d.Serial, d.WriteCache, options.RequestQueues);
            }
            luns.AddRange(members);
            _targets[group.Key] = new ScsiTargetNode(group.Key, members);
        }
        Luns = luns;
        Config = new ScsiConfigSpace(options, definitions.Max(d => d.Target), definitions.Max(d => d.Lun));
        ScratchSize = Math.Max(Math.Max(4096, SupportedOpcodes.MaxLength), 8 + 8 * definitions.GroupBy(d => d.Target).Max(g => g.Count()));
    }

    public string Name { get; }
    public ScsiOptions Options { get; }
    public IReadOnlyList<ScsiLun> Luns { get; }
    public ScsiConfigSpace Config { get; }
    /// <summary>Events for the driver (hot-plug, capacity changes), delivered by the event queue.</summary>
    public ScsiEventSource Events { get; } = new();
    /// <summary>Bytes of scratch space each request queue needs for emulated answers and parameter lists.</summary>
    public int ScratchSize { get; }

    public ScsiTargetNode? FindTarget(byte target) => _targets[target];

    /// <summary>Device reset (no queue running): what the guest changed (sense/CDB sizes, each LUN's WCE, a stopped
    /// LUN) returns to the configured defaults.</summary>
    public void Reset()
    {
        Config.Reset();
        foreach (var lun in Luns)
        {
            lun.ResetWriteCache();
            lun.Stopped = false;
            lun.ClearAttentions();
        }
    }
}
