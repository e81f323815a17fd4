using System.Diagnostics;
using System.Text;
using BlkTarget.Monitoring;
using BlkTarget.Vhost.Stats;
using Prometheus;

namespace BlkTarget.Tests.Monitoring;

/// <summary>What prometheus-net prints for known counters fed through <see cref="TargetMetrics"/> (the exposition
/// lines are literal: the library's formatting is part of what operators and the README see).</summary>
public class TargetMetricsTests
{
    private static long Ticks(long ns) => (long)(ns * (Stopwatch.Frequency / 1e9));

    private sealed class Target
    {
        private readonly CollectorRegistry _registry = Metrics.NewCustomRegistry();
        private readonly TargetMetrics _metrics;

        public Target() => _metrics = new TargetMetrics(_registry);

        /// <summary>Updates from <paramref name="stats"/> and returns the exposition lines.</summary>
        public string[] Scrape(TargetStats stats, params double[] busyRatios)
        {
            _metrics.Update(stats, busyRatios);
            using var body = new MemoryStream();
            _registry.CollectAndExportAsTextAsync(body).GetAwaiter().GetResult();
            return Encoding.UTF8.GetString(body.ToArray()).Split('\n');
        }
    }

    /// <summary>The one line of <paramref name="series"/> (name and labels).</summary>
    private static string Line(string[] lines, string series) => lines.Single(l => l.StartsWith(series + " ", StringComparison.Ordinal));

    private static QueueCounters Requests(IoOp op, params long[] latenciesNs)
    {
        var q = new QueueCounters();
        foreach (long ns in latenciesNs)
        {
            q.Begin();
            q.Complete(op, 4096, IoErrorKind.None, Ticks(ns));
        }
        return q;
    }

    private static ExportStats Export(string name, object source, CounterSnapshot counts) =>
        new(name, "blk", ["d1"], [new QueueStats(0, 0, counts)], counts) { Source = source };

    private static TargetStats Stats(params ExportStats[] exports) => new(1.0, exports, [], [new ReactorStats(0, null, 0, 1)]);

    private static TargetStats Sample()
    {
        var q0 = new QueueCounters();
        for (int i = 0; i < 3; i++) { q0.Begin(); q0.Complete(IoOp.Read, 4096, IoErrorKind.None, Ticks(1_500)); }
        q0.Begin();
        q0.Complete(IoOp.Read, 4096, IoErrorKind.OutOfRange, Ticks(900));
        q0.Begin();
        q0.Complete(IoOp.Write, 65536, IoErrorKind.None, Ticks(30_000_000));
        q0.Begin();
        var snapshot = CounterSnapshot.Read(q0);
        return new TargetStats(1.0,
            [new ExportStats("vm\"1", "blk", ["d1"], [new QueueStats(0, 0, snapshot)], snapshot) { Source = new object() }],
            [new DiskStats("d1", 1 << 30, 3 << 20, snapshot), new DiskStats("r", 1 << 20, null, new CounterSnapshot())],
            [new ReactorStats(0, 1, 2.5, 1)]);
    }

    [Fact]
    public void Counters_gauges_and_histogram_lines_follow_the_exposition_format()
    {
        var lines = new Target().Scrape(Sample(), 0.25);

        string[] expected =
        [
            "# HELP blktarget_requests_total Requests completed (failed ones included), by export, vhost-user queue and operation.",
            "# TYPE blktarget_requests_total counter",
            "blktarget_requests_total{export=\"vm\\\"1\",queue=\"0\",op=\"read\"} 4",
            "blktarget_requests_total{export=\"vm\\\"1\",queue=\"0\",op=\"write\"} 1",
            "blktarget_requests_total{export=\"vm\\\"1\",queue=\"0\",op=\"flush\"} 0",
            "blktarget_bytes_total{export=\"vm\\\"1\",queue=\"0\",op=\"read\"} 12288",
            "blktarget_bytes_total{export=\"vm\\\"1\",queue=\"0\",op=\"write\"} 65536",
            "blktarget_request_errors_total{export=\"vm\\\"1\",op=\"read\",kind=\"out_of_range\"} 1",
            "# TYPE blktarget_request_duration_seconds histogram",
            // 900 ns: bucket 896..911, under 1 µs; 1500 ns: bucket 1472..1503, observed as its midpoint 1487.5 ns.
            "blktarget_request_duration_seconds_bucket{export=\"vm\\\"1\",op=\"read\",le=\"1e-06\"} 1",
            "blktarget_request_duration_seconds_bucket{export=\"vm\\\"1\",op=\"read\",le=\"2e-06\"} 4",
            "blktarget_request_duration_seconds_bucket{export=\"vm\\\"1\",op=\"read\",le=\"+Inf\"} 4",
            "blktarget_request_duration_seconds_count{export=\"vm\\\"1\",op=\"read\"} 4",
            "blktarget_request_duration_seconds_bucket{export=\"vm\\\"1\",op=\"write\",le=\"0.02\"} 0",
            "blktarget_request_duration_seconds_bucket{export=\"vm\\\"1\",op=\"write\",le=\"0.05\"} 1",
            "blktarget_inflight{export=\"vm\\\"1\"} 1",
            "blktarget_reactor_busy_ratio{reactor=\"0\"} 0.25",
            "blktarget_reactor_busy_seconds_total{reactor=\"0\"} 2.5",
            "blktarget_disk_size_bytes{disk=\"d1\"} 1073741824",
            "blktarget_disk_size_bytes{disk=\"r\"} 1048576",
            "blktarget_disk_allocated_bytes{disk=\"d1\"} 3145728",
        ];
        foreach (var line in expected) Assert.Contains(line, lines);
        // The sum is count x midpoint (3 x 1487.5 + 903.5 ns), not the exact 5400 ns: see TargetMetrics.
        Assert.Equal("blktarget_request_duration_seconds_sum{export=\"vm\\\"1\",op=\"read\"} 5.366e-06", Line(lines, "blktarget_request_duration_seconds_sum{export=\"vm\\\"1\",op=\"read\"}"));
        Assert.DoesNotContain(lines, l => l.StartsWith("blktarget_request_duration_seconds_bucket{export=\"vm\\\"1\",op=\"flush\"", StringComparison.Ordinal));
        Assert.DoesNotContain(lines, l => l.StartsWith("blktarget_disk_allocated_bytes{disk=\"r\"}", StringComparison.Ordinal));
        // Only our metrics: no process or runtime series from the library.
        Assert.All(lines.Where(l => l.Length > 0 && !l.StartsWith('#')), l => Assert.StartsWith("blktarget_", l));
    }

    [Fact]
    public void A_second_scrape_adds_only_the_new_requests_to_the_histogram()
    {
        var target = new Target();
        var source = new object();
        var q = Requests(IoOp.Read, 1_500);
        target.Scrape(Stats(Export("e1", source, CounterSnapshot.Read(q))));
        q.Begin();
        q.Complete(IoOp.Read, 4096, IoErrorKind.None, Ticks(1_500));
        var lines = target.Scrape(Stats(Export("e1", source, CounterSnapshot.Read(q))));

        Assert.Contains("blktarget_requests_total{export=\"e1\",queue=\"0\",op=\"read\"} 2", lines);
        Assert.Contains("blktarget_request_duration_seconds_bucket{export=\"e1\",op=\"read\",le=\"2e-06\"} 2", lines);
        Assert.Contains("blktarget_request_duration_seconds_count{export=\"e1\",op=\"read\"} 2", lines);
        Assert.Equal("blktarget_request_duration_seconds_sum{export=\"e1\",op=\"read\"} 2.975e-06", Line(lines, "blktarget_request_duration_seconds_sum{export=\"e1\",op=\"read\"}"));
    }

    [Fact]
    public void An_export_deleted_and_created_again_under_its_name_starts_its_series_from_its_new_counts()
    {
        var target = new Target();
        target.Scrape(Stats(Export("e1", new object(), CounterSnapshot.Read(Requests(IoOp.Read, 1_500, 1_500, 1_500)))));

        // Deleted: every series of it goes.
        var lines = target.Scrape(Stats());
        Assert.DoesNotContain(lines, l => l.Contains("export=\"e1\"", StringComparison.Ordinal));

        // A new export object under the same name, with fewer requests than the old one had.
        lines = target.Scrape(Stats(Export("e1", new object(), CounterSnapshot.Read(Requests(IoOp.Read, 1_500)))));
        Assert.Contains("blktarget_requests_total{export=\"e1\",queue=\"0\",op=\"read\"} 1", lines);
        Assert.Contains("blktarget_request_duration_seconds_count{export=\"e1\",op=\"read\"} 1", lines);

        // Deleted and recreated between two scrapes: told apart by object, not by name.
        lines = target.Scrape(Stats(Export("e1", new object(), CounterSnapshot.Read(Requests(IoOp.Write, 1_500)))));
        Assert.Contains("blktarget_requests_total{export=\"e1\",queue=\"0\",op=\"read\"} 0", lines);
        Assert.Contains("blktarget_requests_total{export=\"e1\",queue=\"0\",op=\"write\"} 1", lines);
        Assert.DoesNotContain(lines, l => l.StartsWith("blktarget_request_duration_seconds_count{export=\"e1\",op=\"read\"}", StringComparison.Ordinal));
    }

    [Fact]
    public void An_export_recreated_with_fewer_queues_and_no_lower_count_drops_the_old_queues_series()
    {
        // Nothing fell, so only the object tells the new export from the old one.
        var target = new Target();
        var one = CounterSnapshot.Read(Requests(IoOp.Read, 1_500));
        target.Scrape(Stats(new ExportStats("e1", "blk", ["d1"], [new QueueStats(0, 0, one), new QueueStats(1, 0, new CounterSnapshot())], one) { Source = new object() }));
        var lines = target.Scrape(Stats(Export("e1", new object(), CounterSnapshot.Read(Requests(IoOp.Read, 1_500, 1_500)))));

        Assert.Contains("blktarget_requests_total{export=\"e1\",queue=\"0\",op=\"read\"} 2", lines);
        Assert.DoesNotContain(lines, l => l.Contains("queue=\"1\"", StringComparison.Ordinal));
    }

    [Fact]
    public void Counts_that_fall_for_the_same_export_are_published_again_as_a_reset()
    {
        // A hot-removed LUN takes its counts out of the export's totals.
        var target = new Target();
        var source = new object();
        target.Scrape(Stats(Export("e1", source, CounterSnapshot.Read(Requests(IoOp.Read, 1_500, 1_500)))));
        var lines = target.Scrape(Stats(Export("e1", source, CounterSnapshot.Read(Requests(IoOp.Read, 1_500)))));

        Assert.Contains("blktarget_requests_total{export=\"e1\",queue=\"0\",op=\"read\"} 1", lines);
        Assert.Contains("blktarget_request_duration_seconds_count{export=\"e1\",op=\"read\"} 1", lines);
    }

    [Fact]
    public void A_deleted_disk_loses_its_series()
    {
        var target = new Target();
        target.Scrape(new TargetStats(1.0, [], [new DiskStats("d1", 1 << 20, 1 << 16, new CounterSnapshot())], []));
        var lines = target.Scrape(new TargetStats(1.0, [], [], []));

        Assert.DoesNotContain(lines, l => l.Contains("disk=\"d1\"", StringComparison.Ordinal));
    }

    [Theory]
    // A bucket of ours counts under the first bound at or above its highest value. 991 ns: bucket 976..991, under
    // 1 µs. 992 and 1000 ns: bucket 992..1007 (its midpoint 999.5 ns is under 1 µs, so it is observed as 1007 ns).
    [InlineData(991, "1e-06")]
    [InlineData(992, "2e-06")]
    [InlineData(1_000, "2e-06")]
    [InlineData(1_983, "2e-06")]
    [InlineData(2_000, "5e-06")]
    [InlineData(0, "1e-06")]
    // 9.9 s: bucket 9.66..9.93 s, under 10 s; 9.999 s: bucket 9.93..10.2 s, over the last bound.
    [InlineData(9_900_000_000, "10")]
    [InlineData(9_999_000_000, "+Inf")]
    [InlineData(10_500_000_000, "+Inf")]
    public void A_latency_at_a_bucket_edge_counts_under_the_same_le_as_before(long ns, string le)
    {
        var lines = new Target().Scrape(Stats(Export("e1", new object(), CounterSnapshot.Read(Requests(IoOp.Read, ns)))));

        var bucket = lines.Where(l => l.StartsWith("blktarget_request_duration_seconds_bucket{export=\"e1\",op=\"read\"", StringComparison.Ordinal))
            .First(l => l.EndsWith(" 1", StringComparison.Ordinal));
        Assert.Equal($"blktarget_request_duration_seconds_bucket{{export=\"e1\",op=\"read\",le=\"{le}\"}} 1", bucket);
    }

    [Fact]
    public void Every_bucket_of_ours_counts_under_the_first_bound_at_or_above_its_highest_value()
    {
        var lowest = Enumerable.Range(0, QueueCounters.TrackedBuckets).Select(i => (long)LogLinearBuckets.LowestOf(i)).ToArray();
        var counts = CounterSnapshot.Read(Requests(IoOp.Read, lowest));
        var lines = new Target().Scrape(Stats(Export("e1", new object(), counts)));

        foreach (double bound in TargetMetrics.BucketBounds)
        {
            long expected = Enumerable.Range(0, QueueCounters.TrackedBuckets).Count(i => LogLinearBuckets.HighestOf(i) <= (ulong)Math.Round(bound * 1e9));
            string le = bound.ToString(System.Globalization.CultureInfo.InvariantCulture).ToLowerInvariant();
            Assert.Contains($"blktarget_request_duration_seconds_bucket{{export=\"e1\",op=\"read\",le=\"{le}\"}} {expected}", lines);
        }
    }
}
