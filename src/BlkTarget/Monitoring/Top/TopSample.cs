using System.Text.Json.Nodes;
using BlkTarget.Vhost.Stats;

namespace BlkTarget.Monitoring.Top;

/// <summary>One export in a <see cref="TopSample"/>: cumulative counts (all ops together) and its latency histogram.</summary>
public sealed record TopExport(string Name, int Queues, long Ops, long ReadBytes, long WriteBytes, long LatencySumNs, long[] Buckets, long InFlight);

/// <summary>One reactor in a <see cref="TopSample"/>: cumulative busy seconds and queues polled.</summary>
public sealed record TopReactor(int Id, double BusySeconds, int Queues);

/// <summary>What `blktarget top` keeps of one `stats` result (asked with buckets): cumulative values at
/// <see cref="TimeSeconds"/> (monotonic). Rates come from two of them.</summary>
public sealed record TopSample(double TimeSeconds, IReadOnlyList<TopExport> Exports, IReadOnlyList<TopReactor> Reactors)
{
    /// <summary>Reads a `stats` result (<see cref="StatsJson"/>, with buckets).</summary>
    public static TopSample Parse(JsonNode stats) => new(
        (double)stats["time_seconds"]!,
        stats["exports"]!.AsArray().Select(e =>
        {
            var ops = e!["ops"]!;
            var buckets = new long[QueueCounters.TrackedBuckets];
            foreach (var pair in e["buckets"]?.AsArray() ?? [])
                buckets[(int)pair![0]!] = (long)pair[1]!;
            return new TopExport((string)e["name"]!, e["queues"]!.AsArray().Count, IoOps.All.Sum(op => (long)ops[IoOps.Name(op)]!["ops"]!),
                (long)ops["read"]!["bytes"]!, (long)ops["write"]!["bytes"]!,
                IoOps.All.Sum(op => (long)ops[IoOps.Name(op)]!["latency_sum_ns"]!), buckets, (long)e["in_flight"]!);
        }).ToList(),
        stats["reactors"]!.AsArray().Select(r => new TopReactor((int)r!["id"]!, (double)r["busy_seconds"]!, (int)r["queues"]!)).ToList());
}
