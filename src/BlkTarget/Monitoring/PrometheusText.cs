using System.Globalization;
using System.Text;
using BlkTarget.Vhost.Stats;

namespace BlkTarget.Monitoring;

/// <summary>
/// Writes <see cref="TargetStats"/> in the Prometheus text exposition format (version 0.0.4). Metrics (all counters
/// raw, never reset by the `stats` RPC):
/// <list type="bullet">
/// <item>blktarget_requests_total{export,queue,op}, blktarget_bytes_total{export,queue,op} (every op, zeros included)</item>
/// <item>blktarget_request_errors_total{export,op,kind} (combinations that happened)</item>
/// <item>blktarget_request_duration_seconds{export,op} histogram (ops that happened); <see cref="BucketBounds"/> are
/// the <c>le</c> values: a bucket of ours counts under the first bound at or above its highest value, so a
/// cumulative count may trail the true one by requests within ~3% below a bound</item>
/// <item>blktarget_inflight{export}; blktarget_reactor_busy_ratio{reactor} (over the last sampling interval),
/// blktarget_reactor_busy_seconds_total{reactor}; blktarget_disk_size_bytes{disk},
/// blktarget_disk_allocated_bytes{disk} (images only)</item>
/// </list>
/// </summary>
public static class PrometheusText
{
    /// <summary>The content type of the exposition format.</summary>
    public const string ContentType = "text/plain; version=0.0.4; charset=utf-8";

    /// <summary>Histogram bounds in seconds: 1-2-5 steps from 1 µs to 10 s.</summary>
    public static IReadOnlyList<double> BucketBounds { get; } =
    [
        1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5, 1, 2, 5, 10,
    ];

    /// <summary>The exposition text; <paramref name="busyRatios"/>: per reactor index, its load over the last
    /// sampling interval (0..1).</summary>
    public static string Write(TargetStats stats, IReadOnlyList<double> busyRatios)
    {
        var w = new StringBuilder();
        Header(w, "blktarget_requests_total", "counter", "Requests completed (failed ones included), by export, vhost-user queue and operation.");
        foreach (var e in stats.Exports)
            foreach (var q in e.Queues)
                foreach (var op in IoOps.All)
                    Line(w, "blktarget_requests_total", [("export", e.Name), ("queue", Num(q.Index)), ("op", IoOps.Name(op))], q.Counters.Ops(op));
        Header(w, "blktarget_bytes_total", "counter", "Bytes moved by successful requests, by export, vhost-user queue and operation.");
        foreach (var e in stats.Exports)
            foreach (var q in e.Queues)
                foreach (var op in IoOps.All)
                    Line(w, "blktarget_bytes_total", [("export", e.Name), ("queue", Num(q.Index)), ("op", IoOps.Name(op))], q.Counters.Bytes(op));
        Header(w, "blktarget_request_errors_total", "counter", "Failed requests, by export, operation and kind of failure.");
        foreach (var e in stats.Exports)
            foreach (var op in IoOps.All)
                foreach (var kind in IoErrorKinds.Failures)
                    if (e.Total.Errors(op, kind) is var n and > 0)
                        Line(w, "blktarget_request_errors_total", [("export", e.Name), ("op", IoOps.Name(op)), ("kind", IoErrorKinds.Name(kind))], n);
        Header(w, "blktarget_request_duration_seconds", "histogram", "Request latency from leaving the avail ring to entering the used ring.");
        foreach (var e in stats.Exports)
            foreach (var op in IoOps.All)
                if (e.Total.Ops(op) > 0) Histogram(w, e.Name, op, e.Total);
        Header(w, "blktarget_inflight", "gauge", "Requests taken from the rings and not completed yet.");
        foreach (var e in stats.Exports) Line(w, "blktarget_inflight", [("export", e.Name)], e.Total.InFlight);
        Header(w, "blktarget_reactor_busy_ratio", "gauge", "Share of the last sampling interval the reactor spent in polling rounds that found work.");
        foreach (var r in stats.Reactors)
            Line(w, "blktarget_reactor_busy_ratio", [("reactor", Num(r.Id))], r.Id < busyRatios.Count ? busyRatios[r.Id] : 0);
        Header(w, "blktarget_reactor_busy_seconds_total", "counter", "Seconds the reactor spent in polling rounds that found work.");
        foreach (var r in stats.Reactors) Line(w, "blktarget_reactor_busy_seconds_total", [("reactor", Num(r.Id))], r.BusySeconds);
        Header(w, "blktarget_disk_size_bytes", "gauge", "Size of the disk as the guest sees it.");
        foreach (var d in stats.Disks) Line(w, "blktarget_disk_size_bytes", [("disk", d.Name)], d.SizeBytes);
        Header(w, "blktarget_disk_allocated_bytes", "gauge", "Space the image's allocated clusters take (images only).");
        foreach (var d in stats.Disks)
            if (d.AllocatedBytes is { } allocated) Line(w, "blktarget_disk_allocated_bytes", [("disk", d.Name)], allocated);
        return w.ToString();
    }

    private static void Histogram(StringBuilder w, string export, IoOp op, CounterSnapshot s)
    {
        var buckets = s.Buckets(op);
        string opName = IoOps.Name(op);
        long cumulative = 0;
        int next = 0;
        foreach (double bound in BucketBounds)
        {
            ulong limit = (ulong)Math.Round(bound * 1e9);
            while (next < buckets.Length && LogLinearBuckets.HighestOf(next) <= limit) cumulative += buckets[next++];
            Line(w, "blktarget_request_duration_seconds_bucket", [("export", export), ("op", opName), ("le", bound.ToString("0.#########", CultureInfo.InvariantCulture))], cumulative);
        }
        Line(w, "blktarget_request_duration_seconds_bucket", [("export", export), ("op", opName), ("le", "+Inf")], s.Ops(op));
        Line(w, "blktarget_request_duration_seconds_sum", [("export", export), ("op", opName)], s.LatencySumNanoseconds(op) / 1e9);
        Line(w, "blktarget_request_duration_seconds_count", [("export", export), ("op", opName)], s.Ops(op));
    }

    private static void Header(StringBuilder w, string name, string type, string help) =>
        w.Append("# HELP ").Append(name).Append(' ').Append(help).Append("\n# TYPE ").Append(name).Append(' ').Append(type).Append('\n');

    private static void Line(StringBuilder w, string name, (string Name, string Value)[] labels, double value)
    {
        w.Append(name).Append('{');
        for (int i = 0; i < labels.Length; i++)
        {
            if (i > 0) w.Append(',');
            w.Append(labels[i].Name).Append("=\"").Append(Escape(labels[i].Value)).Append('"');
        }
        w.Append("} ").Append(Num(value)).Append('\n');
    }

    private static string Num(double value) => value.ToString("R", CultureInfo.InvariantCulture);

    private static string Escape(string value) => value.Replace("\\", "\\\\").Replace("\"", "\\\"").Replace("\n", "\\n");
}
