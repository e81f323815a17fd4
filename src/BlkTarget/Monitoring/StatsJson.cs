using System.Text.Json.Nodes;
using BlkTarget.Vhost.Stats;

namespace BlkTarget.Monitoring;

/// <summary>
/// The `stats` RPC result. Shape (latencies in nanoseconds, sizes in bytes, times in seconds):
/// <code>
/// {time_seconds, exports: [{name, kind, disks: [name], in_flight, ops, latency_ns, buckets?,
///                           queues: [{index, reactor, in_flight, ops, latency_ns, buckets?}]}],
///  disks: [{name, size_bytes, allocated_bytes?, in_flight, ops, latency_ns, buckets?}],
///  reactors: [{id, cpu, busy_seconds, queues}]}
/// ops = {read|write|flush|discard|write_zeroes|other: {ops, bytes, latency_sum_ns, errors: {io_error, unsupported,
///        out_of_range, read_only, no_space, invalid}, latency_ns}}
/// latency_ns = {mean, p50, p90, p99, p99_9, max}   (every op together at the object level)
/// buckets = [[bucket, count], ...]                 (every op together, non-empty buckets only; LogLinearBuckets)
/// </code>
/// time_seconds is a monotonic clock: rates are differences between two results divided by its difference.
/// </summary>
public static class StatsJson
{
    /// <summary>The result object; <paramref name="buckets"/> adds the histograms (for `blktarget top`).</summary>
    public static JsonObject From(TargetStats stats, bool buckets) => new()
    {
        ["time_seconds"] = stats.TimeSeconds,
        ["exports"] = Array(stats.Exports.Select(e =>
        {
            var o = new JsonObject { ["name"] = e.Name, ["kind"] = e.Kind, ["disks"] = Array(e.Disks.Select(d => (JsonNode?)d)) };
            AddCounts(o, e.Total, buckets);
            o["queues"] = Array(e.Queues.Select(q =>
            {
                var qo = new JsonObject { ["index"] = q.Index, ["reactor"] = q.Reactor };
                AddCounts(qo, q.Counters, buckets);
                return (JsonNode?)qo;
            }));
            return (JsonNode?)o;
        })),
        ["disks"] = Array(stats.Disks.Select(d =>
        {
            var o = new JsonObject { ["name"] = d.Name, ["size_bytes"] = d.SizeBytes };
            if (d.AllocatedBytes is { } allocated) o["allocated_bytes"] = allocated;
            AddCounts(o, d.Total, buckets);
            return (JsonNode?)o;
        })),
        ["reactors"] = Array(stats.Reactors.Select(r => (JsonNode?)new JsonObject
        {
            ["id"] = r.Id, ["cpu"] = r.Cpu, ["busy_seconds"] = Math.Round(r.BusySeconds, 6), ["queues"] = r.Queues,
        })),
    };

    private static JsonArray Array(IEnumerable<JsonNode?> items) => new(items.ToArray());

    private static void AddCounts(JsonObject o, CounterSnapshot s, bool buckets)
    {
        o["in_flight"] = s.InFlight;
        var ops = new JsonObject();
        foreach (var op in IoOps.All)
        {
            var errors = new JsonObject();
            foreach (var kind in IoErrorKinds.Failures) errors[IoErrorKinds.Name(kind)] = s.Errors(op, kind);
            ops[IoOps.Name(op)] = new JsonObject
            {
                ["ops"] = s.Ops(op), ["bytes"] = s.Bytes(op), ["latency_sum_ns"] = s.LatencySumNanoseconds(op), ["errors"] = errors,
                ["latency_ns"] = Latency(s.Latency(op)),
            };
        }
        o["ops"] = ops;
        o["latency_ns"] = Latency(s.Latency(null));
        if (buckets)
        {
            var all = s.Buckets(null);
            var sparse = new JsonArray();
            for (int i = 0; i < all.Length; i++)
                if (all[i] != 0) sparse.Add(new JsonArray(i, all[i]));
            o["buckets"] = sparse;
        }
    }

    private static JsonObject Latency(LatencySummary l) => new()
    {
        ["mean"] = Math.Round(l.Mean), ["p50"] = l.P50, ["p90"] = l.P90, ["p99"] = l.P99, ["p99_9"] = l.P999, ["max"] = l.Max,
    };
}
