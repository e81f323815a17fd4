using System.Runtime.CompilerServices;
using BlkTarget.Vhost.Stats;

namespace BlkTarget.Monitoring;

/// <summary>
/// What "reset" means for counters only their reactor may write: a snapshot per counter set, subtracted from every
/// later read. Thread-safe (RPC calls run on several threads). Counters that go away take their baseline with them.
/// Prometheus metrics never use it: their counters must only grow.
/// </summary>
public sealed class StatsBaseline
{
    private readonly ConditionalWeakTable<QueueCounters, CounterSnapshot> _baselines = new();
    private readonly object _gate = new();

    /// <summary>The counts of <paramref name="counters"/> since its last <see cref="Reset"/> (or since it began).</summary>
    public CounterSnapshot Since(QueueCounters counters)
    {
        var now = CounterSnapshot.Read(counters);
        lock (_gate) return _baselines.TryGetValue(counters, out var baseline) ? now.Minus(baseline) : now;
    }

    /// <summary><see cref="Since"/>, and counting starts from zero at that same read.</summary>
    public CounterSnapshot SinceAndReset(QueueCounters counters)
    {
        var now = CounterSnapshot.Read(counters);
        lock (_gate)
        {
            var since = _baselines.TryGetValue(counters, out var baseline) ? now.Minus(baseline) : now;
            _baselines.AddOrUpdate(counters, now);
            return since;
        }
    }
}
