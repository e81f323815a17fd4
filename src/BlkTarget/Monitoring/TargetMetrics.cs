using BlkTarget.Vhost.Stats;
using Prometheus;

namespace BlkTarget.Monitoring;

/// <summary>
/// The target's Prometheus metrics as prometheus-net collectors in a registry of their own (several targets in one
/// process, as the tests run them, must not share the static default registry). Nothing is pushed from the data path:
/// <see cref="Update"/> copies a <see cref="TargetStats"/> read at scrape time into the collectors. Metrics (all
/// counters raw, never reset by the `stats` RPC):
/// <list type="bullet">
/// <item>blktarget_requests_total{export,queue,op}, blktarget_bytes_total{export,queue,op} (every op, zeros included)</item>
/// <item>blktarget_request_errors_total{export,op,kind} (combinations that happened)</item>
/// <item>blktarget_request_duration_seconds{export,op} histogram (ops that happened) with <see cref="BucketBounds"/>:
/// a bucket of ours counts under the first bound at or above its highest value, so a cumulative count may trail
/// the true one by requests within ~3% below a bound</item>
/// <item>blktarget_inflight{export}; blktarget_reactor_busy_ratio{reactor} (over the last sampling interval),
/// blktarget_reactor_busy_seconds_total{reactor}; blktarget_disk_size_bytes{disk},
/// blktarget_disk_allocated_bytes{disk} (images only)</item>
/// </list>
/// The registry holds only these: prometheus-net's process and runtime metrics are registered on its default
/// registry alone (on its first collection), never on a custom one, and we leave them out on purpose: the README
/// documents this list, and process figures are node_exporter's / the process exporter's job.
/// </summary>
public sealed class TargetMetrics
{
    /// <summary>Histogram bounds in seconds: 1-2-5 steps from 1 µs to 10 s.</summary>
    public static IReadOnlyList<double> BucketBounds { get; } =
    [
        1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5, 1, 2, 5, 10,
    ];

    /// <summary>
    /// Per bucket of ours, the value (seconds) its requests are observed with. prometheus-net's histogram keeps its
    /// own counts, so each scrape feeds it the per-bucket increase since the last one (<c>Observe(value, count)</c>).
    /// The value is the bucket's midpoint, or its highest value when the midpoint would fall at or below the previous
    /// <c>le</c> bound: either way it lands in the <c>le</c> bucket that the bucket's highest value selects, as the
    /// hand-written exposition placed it. Cost of that choice: <c>_sum</c> becomes Σ count × value instead of the
    /// exact LatencySumNanoseconds (prometheus-net offers no way to add to a histogram's sum without observations).
    /// A bucket is at most 1/32 of its power of two wide, so each request is off by at most ~1.6% of its latency
    /// (~3.1% in a bucket straddling a bound), and <c>_sum</c> by at most that share of itself (exact below 64 ns).
    /// </summary>
    private static readonly double[] Representative = BuildRepresentatives();

    private const string ExportLabel = "export";

    private readonly object _gate = new();
    private readonly Counter _requests;
    private readonly Counter _bytes;
    private readonly Counter _errors;
    private readonly Histogram _duration;
    private readonly Gauge _inflight;
    private readonly Gauge _busyRatio;
    private readonly Counter _busySeconds;
    private readonly Gauge _diskSize;
    private readonly Gauge _diskAllocated;
    private readonly Dictionary<string, ExportState> _exports = [];
    private readonly HashSet<string> _disks = [];

    public TargetMetrics(CollectorRegistry registry)
    {
        var factory = Metrics.WithCustomRegistry(registry);
        _requests = factory.CreateCounter("blktarget_requests_total", "Requests completed (failed ones included), by export, vhost-user queue and operation.", ExportLabel, "queue", "op");
        _bytes = factory.CreateCounter("blktarget_bytes_total", "Bytes moved by successful requests, by export, vhost-user queue and operation.", ExportLabel, "queue", "op");
        _errors = factory.CreateCounter("blktarget_request_errors_total", "Failed requests, by export, operation and kind of failure.", ExportLabel, "op", "kind");
        _duration = factory.CreateHistogram("blktarget_request_duration_seconds", "Request latency from leaving the avail ring to entering the used ring.",
            [ExportLabel, "op"], new HistogramConfiguration { Buckets = [.. BucketBounds] });
        _inflight = factory.CreateGauge("blktarget_inflight", "Requests taken from the rings and not completed yet.", ExportLabel);
        _busyRatio = factory.CreateGauge("blktarget_reactor_busy_ratio", "Share of the last sampling interval the reactor spent in polling rounds that found work.", "reactor");
        _busySeconds = factory.CreateCounter("blktarget_reactor_busy_seconds_total", "Seconds the reactor spent in polling rounds that found work.", "reactor");
        _diskSize = factory.CreateGauge("blktarget_disk_size_bytes", "Size of the disk as the guest sees it.", "disk");
        _diskAllocated = factory.CreateGauge("blktarget_disk_allocated_bytes", "Space the image's allocated clusters take (images only).", "disk");
    }

    /// <summary>Brings every series up to <paramref name="stats"/> (raw counters); <paramref name="busyRatios"/>: per
    /// reactor index, its load over the last sampling interval (0..1). Series of exports and disks that are gone are
    /// removed. Called before each collection; serialised, as scrapes may overlap.</summary>
    public void Update(TargetStats stats, IReadOnlyList<double> busyRatios)
    {
        lock (_gate)
        {
            var present = new HashSet<string>();
            foreach (var e in stats.Exports)
            {
                present.Add(e.Name);
                UpdateExport(e);
            }
            foreach (var gone in _exports.Keys.Where(n => !present.Contains(n)).ToList())
            {
                Remove(gone, _exports[gone]);
                _exports.Remove(gone);
            }

            foreach (var r in stats.Reactors)
            {
                string id = Num(r.Id);
                _busyRatio.WithLabels(id).Set(r.Id < busyRatios.Count ? busyRatios[r.Id] : 0);
                _busySeconds.WithLabels(id).IncTo(r.BusySeconds);
            }

            var disks = stats.Disks.Select(d => d.Name).ToHashSet();
            foreach (var gone in _disks.Where(n => !disks.Contains(n)).ToList())
            {
                _diskSize.RemoveLabelled(gone);
                _diskAllocated.RemoveLabelled(gone);
                _disks.Remove(gone);
            }
            foreach (var d in stats.Disks)
            {
                _disks.Add(d.Name);
                _diskSize.WithLabels(d.Name).Set(d.SizeBytes);
                if (d.AllocatedBytes is { } allocated) _diskAllocated.WithLabels(d.Name).Set(allocated);
            }
        }
    }

    private void UpdateExport(ExportStats e)
    {
        // Counters only go up in prometheus-net (IncTo ignores a lower value, and histogram counts are our increases):
        // when the counts restart (another export object under this name) or fall (a hot-removed LUN takes its counts
        // out of the export's), the export's series are removed and published again from the new values, which
        // Prometheus reads as a counter reset.
        if (_exports.TryGetValue(e.Name, out var state) && (!ReferenceEquals(state.Source, e.Source) || Fell(state.Last, e)))
        {
            Remove(e.Name, state);
            state = null;
        }
        state ??= _exports[e.Name] = new ExportState(e.Source);

        foreach (var q in e.Queues)
        {
            state.Queues.Add(q.Index);
            string queue = Num(q.Index);
            foreach (var op in IoOps.All)
            {
                _requests.WithLabels(e.Name, queue, IoOps.Name(op)).IncTo(q.Counters.Ops(op));
                _bytes.WithLabels(e.Name, queue, IoOps.Name(op)).IncTo(q.Counters.Bytes(op));
            }
        }
        foreach (var op in IoOps.All)
        {
            foreach (var kind in IoErrorKinds.Failures)
                if (e.Total.Errors(op, kind) is var n and > 0) _errors.WithLabels(e.Name, IoOps.Name(op), IoErrorKinds.Name(kind)).IncTo(n);
            if (e.Total.Ops(op) == 0) continue;
            var histogram = _duration.WithLabels(e.Name, IoOps.Name(op));
            var now = e.Total.Buckets(op);
            ReadOnlySpan<long> before = state.Last is null ? [] : state.Last.Total.Buckets(op);
            for (int i = 0; i < now.Length; i++)
                if (now[i] - (i < before.Length ? before[i] : 0) is var delta and > 0) histogram.Observe(Representative[i], delta);
        }
        _inflight.WithLabels(e.Name).Set(e.Total.InFlight);
        state.Last = e;
    }

    /// <summary>Whether any count of <paramref name="now"/> is below the one published from <paramref name="last"/>.</summary>
    private static bool Fell(ExportStats? last, ExportStats now)
    {
        if (last is null) return false;
        foreach (var q in now.Queues)
        {
            var before = last.Queues.FirstOrDefault(b => b.Index == q.Index);
            if (before is null) continue;
            foreach (var op in IoOps.All)
                if (q.Counters.Ops(op) < before.Counters.Ops(op) || q.Counters.Bytes(op) < before.Counters.Bytes(op)) return true;
        }
        foreach (var op in IoOps.All)
        {
            foreach (var kind in IoErrorKinds.Failures)
                if (now.Total.Errors(op, kind) < last.Total.Errors(op, kind)) return true;
            var a = last.Total.Buckets(op);
            var b = now.Total.Buckets(op);
            for (int i = 0; i < a.Length && i < b.Length; i++)
                if (b[i] < a[i]) return true;
        }
        return false;
    }

    /// <summary>Removes every series <paramref name="export"/> may have published (removing one never published is a
    /// no-op).</summary>
    private void Remove(string export, ExportState state)
    {
        foreach (var op in IoOps.All)
        {
            string opName = IoOps.Name(op);
            foreach (int q in state.Queues)
            {
                _requests.RemoveLabelled(export, Num(q), opName);
                _bytes.RemoveLabelled(export, Num(q), opName);
            }
            foreach (var kind in IoErrorKinds.Failures) _errors.RemoveLabelled(export, opName, IoErrorKinds.Name(kind));
            _duration.RemoveLabelled(export, opName);
        }
        _inflight.RemoveLabelled(export);
    }

    private static double[] BuildRepresentatives()
    {
        var boundsNs = BucketBounds.Select(b => Math.Round(b * 1e9)).ToArray();
        var values = new double[QueueCounters.TrackedBuckets];
        for (int i = 0; i < values.Length; i++)
        {
            double high = LogLinearBuckets.HighestOf(i);
            double middle = (LogLinearBuckets.LowestOf(i) + high) / 2;
            int le = Array.FindIndex(boundsNs, b => b >= high);
            double previous = le switch { 0 => -1, -1 => boundsNs[^1], _ => boundsNs[le - 1] };
            values[i] = (middle > previous ? middle : high) / 1e9;
        }
        return values;
    }

    private static string Num(int value) => value.ToString(System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>What was published for one export object: the queues seen (to remove their series) and the stats
    /// of the last scrape (the base of the histogram increases and of the fall check).</summary>
    private sealed class ExportState(object? source)
    {
        public object? Source { get; } = source;
        public HashSet<int> Queues { get; } = [];
        public ExportStats? Last { get; set; }
    }
}
