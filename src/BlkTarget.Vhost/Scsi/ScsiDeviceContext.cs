using BlkTarget.Vhost.Stats;

namespace BlkTarget.Vhost.Scsi;

/// <summary>
/// What every queue of one virtio-scsi export shares: the LUN table, options, config space, events. LUNs may be
/// added and removed while the guest runs (<see cref="AddLun"/>, <see cref="RemoveLun"/>, on a management thread,
/// one at a time); the table is an immutable snapshot swapped atomically, and each LUN has a slot (its
/// <see cref="ScsiLun.Index"/>, below <see cref="MaxLuns"/>) that indexes the queues' per-LUN channels.
/// </summary>
public sealed class ScsiDeviceContext
{
    /// <summary>LUNs one export can have at once (slots for per-queue channels).</summary>
    public const int MaxLuns = 256;

    private readonly object _gate = new();
    private readonly bool[] _slotUsed = new bool[MaxLuns];
    private readonly List<ScsiRequestQueue> _running = [];
    private volatile ScsiLunTable _table;

    public ScsiDeviceContext(string name, IReadOnlyList<ScsiLunDefinition> definitions, ScsiOptions options)
    {
        ScsiOptions.Validate(options, definitions);
        if (definitions.Count > MaxLuns) throw new ArgumentException($"an export has at most {MaxLuns} LUNs");
        Name = name;
        Options = options;
        UnaddressedCounters = QueueCounterSet.Create(options.RequestQueues);
        var luns = new List<ScsiLun>();
        foreach (var d in definitions.OrderBy(d => d.Target).ThenBy(d => d.Lun))
        {
            _slotUsed[luns.Count] = true;
            luns.Add(NewLun(luns.Count, d));
        }
        _table = new ScsiLunTable(luns);
        Config = new ScsiConfigSpace(options, definitions.Max(d => d.Target), definitions.Max(d => d.Lun));
        ScratchSize = Math.Max(Math.Max(Math.Max(4096, SupportedOpcodes.MaxLength), PersistentReservations.MaxInLength), 8 + 8 * MaxLuns);
    }

    private ScsiLun NewLun(int slot, ScsiLunDefinition d) =>
        new(slot, d.Target, d.Lun, d.Backend, Name, d.Serial, d.WriteCache, Options.RequestQueues,
            d.Shared ?? new SharedLogicalUnit($"{Name}-{d.Target}-{d.Lun}")) { DiskQos = d.DiskQos };

    public string Name { get; }
    public ScsiOptions Options { get; }
    /// <summary>Request statistics per request queue (0-based) of commands that reached no LUN (a missing target or
    /// LUN, REPORT LUNS to an empty address, a malformed request).</summary>
    public IReadOnlyList<QueueCounters> UnaddressedCounters { get; }
    /// <summary>The LUNs now (a snapshot).</summary>
    public IReadOnlyList<ScsiLun> Luns => _table.Luns;
    public ScsiConfigSpace Config { get; }
    /// <summary>Events for the driver (hot-plug, capacity changes), delivered by the event queue.</summary>
    public ScsiEventSource Events { get; } = new();
    /// <summary>Bytes of scratch space each request queue needs for emulated answers and parameter lists.</summary>
    public int ScratchSize { get; }

    public ScsiTargetNode? FindTarget(byte target) => _table.FindTarget(target);

    /// <summary>A frontend connected (session <paramref name="session"/> of this export): every LUN is reached through
    /// a new I_T nexus from now on. Called before any of its queues starts.</summary>
    public void Connected(int session)
    {
        lock (_gate)
        {
            _session = session;
            foreach (var lun in Luns) lun.BeginNexus(session);
        }
    }

    private int _session;

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

    // ---- hot-plug ----

    /// <summary>
    /// Adds a LUN while the device serves: it is in the table for the next command, request queues open a channel
    /// to it on first use, the driver is sent TRANSPORT_RESET / RESCAN for it, and the other LUNs of its target
    /// report REPORTED LUNS DATA HAS CHANGED. Throws <see cref="ArgumentException"/> (address taken, bad LUN number,
    /// bad size, no free slot).
    /// </summary>
    public ScsiLun AddLun(ScsiLunDefinition definition)
    {
        lock (_gate)
        {
            var table = _table;
            ScsiOptions.Validate(Options, [.. table.Luns.Select(l => new ScsiLunDefinition(l.Target, l.Lun, l.Backend, l.Serial)), definition]);
            int slot = Array.IndexOf(_slotUsed, false);
            if (slot < 0) throw new ArgumentException($"an export has at most {MaxLuns} LUNs");
            var lun = NewLun(slot, definition);
            if (_session > 0) lun.BeginNexus(_session);
            _slotUsed[slot] = true;
            _table = new ScsiLunTable([.. table.Luns, lun]);
            AnnounceChange(lun, ScsiEvent.LunAdded(lun.Target, lun.Lun));
            return lun;
        }
    }

    /// <summary>
    /// Removes a LUN while the device serves: it leaves the table (new commands to it end in LOGICAL UNIT NOT
    /// SUPPORTED), each running request queue lets its commands to it complete and closes its channel, then the
    /// driver is sent TRANSPORT_RESET / REMOVED and the target's other LUNs report REPORTED LUNS DATA HAS CHANGED.
    /// Waits up to <paramref name="drainTimeout"/>; past it the LUN stays out of the table but its slot and the
    /// channels of queues still holding commands stay in use, and <see cref="TimeoutException"/> is thrown.
    /// Returns the removed LUN. Throws <see cref="ArgumentException"/> when there is no such LUN.
    /// </summary>
    public ScsiLun RemoveLun(byte target, ushort lunNumber, TimeSpan drainTimeout)
    {
        lock (_gate)
        {
            var table = _table;
            var lun = table.Find(target, lunNumber) ?? throw new ArgumentException($"there is no LUN {target}:{lunNumber}");
            if (table.Luns.Count == 1) throw new ArgumentException("the last LUN of an export cannot be removed; delete the export");
            _table = new ScsiLunTable(table.Luns.Where(l => l != lun));
            List<ScsiRequestQueue> running;
            lock (_running) running = [.. _running];
            var released = new CountdownEvent(running.Count);
            foreach (var queue in running) queue.ReleaseLun(lun, released);
            // Not disposed on a timeout: queues still holding commands signal it when those complete.
            if (!released.Wait(drainTimeout))
                throw new TimeoutException($"LUN {target}:{lunNumber} still had commands in flight after {drainTimeout.TotalSeconds:0} s; it is gone from the guest's view but its backend stays in use");
            released.Dispose();
            _slotUsed[lun.Index] = false;
            AnnounceChange(lun, ScsiEvent.LunRemoved(lun.Target, lun.Lun));
            return lun;
        }
    }

    private void AnnounceChange(ScsiLun changed, ScsiEvent e)
    {
        foreach (var other in _table.Luns)
            if (other != changed && other.Target == changed.Target) other.RaiseAttention(ScsiLun.AttentionLuns);
        Events.Post(e);
    }

    /// <summary>A request queue started (on its reactor): it takes part in LUN removal from now on.</summary>
    internal void Register(ScsiRequestQueue queue)
    {
        lock (_running) _running.Add(queue);
    }

    /// <summary>A request queue stopped: it has closed every channel.</summary>
    internal void Unregister(ScsiRequestQueue queue)
    {
        lock (_running) _running.Remove(queue);
    }
}
