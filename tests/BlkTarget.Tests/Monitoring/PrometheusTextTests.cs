using System.Diagnostics;
using BlkTarget.Monitoring;
using BlkTarget.Vhost.Stats;

namespace BlkTarget.Tests.Monitoring;

public class PrometheusTextTests
{
    private static long Ticks(long ns) => (long)(ns * (Stopwatch.Frequency / 1e9));

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
            [new ExportStats("vm\"1", "blk", ["d1"], [new QueueStats(0, 0, snapshot)], snapshot)],
            [new DiskStats("d1", 1 << 30, 3 << 20, snapshot), new DiskStats("r", 1 << 20, null, new CounterSnapshot())],
            [new ReactorStats(0, 1, 2.5, 1)]);
    }

    [Fact]
    public void Counters_gauges_and_histogram_lines_follow_the_exposition_format()
    {
        var lines = PrometheusText.Write(Sample(), [0.25]).Split('\n');

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
            "blktarget_request_duration_seconds_bucket{export=\"vm\\\"1\",op=\"read\",le=\"0.000001\"} 1",
            "blktarget_request_duration_seconds_bucket{export=\"vm\\\"1\",op=\"read\",le=\"0.000002\"} 4",
            "blktarget_request_duration_seconds_bucket{export=\"vm\\\"1\",op=\"read\",le=\"+Inf\"} 4",
            "blktarget_request_duration_seconds_sum{export=\"vm\\\"1\",op=\"read\"} 5.4E-06",
            "blktarget_request_duration_seconds_count{export=\"vm\\\"1\",op=\"read\"} 4",
            "blktarget_request_duration_seconds_bucket{export=\"vm\\\"1\",op=\"write\",le=\"0.02\"} 0",
            "blktarget_request_duration_seconds_bucket{export=\"vm\\\"1\",op=\"write\",le=\"0.05\"} 1",
            "blktarget_request_duration_seconds_sum{export=\"vm\\\"1\",op=\"write\"} 0.03",
            "blktarget_inflight{export=\"vm\\\"1\"} 1",
            "blktarget_reactor_busy_ratio{reactor=\"0\"} 0.25",
            "blktarget_reactor_busy_seconds_total{reactor=\"0\"} 2.5",
            "blktarget_disk_size_bytes{disk=\"d1\"} 1073741824",
            "blktarget_disk_size_bytes{disk=\"r\"} 1048576",
            "blktarget_disk_allocated_bytes{disk=\"d1\"} 3145728",
        ];
        foreach (var line in expected) Assert.Contains(line, lines);
        Assert.DoesNotContain(lines, l => l.StartsWith("blktarget_request_duration_seconds_bucket{export=\"vm\\\"1\",op=\"flush\"", StringComparison.Ordinal));
        Assert.DoesNotContain(lines, l => l.StartsWith("blktarget_disk_allocated_bytes{disk=\"r\"}", StringComparison.Ordinal));
        Assert.Equal("", lines[^1]);
    }
}
