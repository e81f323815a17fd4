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
                members[i] = new ScsiLun(luns.Count + i, d.Target, d.Lun, d.Backend, name, d.Serial, d.WriteCache, options.RequestQueues,
                    d.Shared ?? new SharedLogicalUnit($"{name}-{d.Target}-{d.Lun}"));
            }
            luns.AddRange(members);
            _targets[group.Key] = new ScsiTargetNode(group.Key, members);
        }
        Luns = luns;
        Config = new ScsiConfigSpace(options, definitions.Max(d => d.Target), definitions.Max(d => d.Lun));
        ScratchSize = Math.Max(Math.Max(Math.Max(4096, SupportedOpcodes.MaxLength), PersistentReservations.MaxInLength), 8 + 8 * definitions.GroupBy(d => d.Target).Max(g => g.Count()));
    }

    public string Name { get; }
    public ScsiOptions Options { get; }
    public IReadOnlyList<ScsiLun> Luns { get; }
    public ScsiConfigSpace Config { get; }
    /// <summary>Bytes of scratch space each request queue needs for emulated answers and parameter lists.</summary>
    public int ScratchSize { get; }

    public ScsiTargetNode? FindTarget(byte target) => _targets[target];

    /// <summary>A frontend connected (session <paramref name="session"/> of this export): every LUN is reached through
    /// a new I_T nexus from now on. Called before any of its queues starts.</summary>
    public void Connected(int session)
    {
        foreach (var lun in Luns) lun.BeginNexus(session);
    }

    /// <summary>Device reset (no queue running): what the guest changed (sense/CDB sizes, each LUN's WCE, a stopped
    /// LUN) returns to the configured defaults.</summary>
    public void Reset()
    {
        Config.Reset();
        foreach (var lun in Luns)
        {
            lun.ResetWriteCache();
            lun.Stopped = false;
        }
    }
}
