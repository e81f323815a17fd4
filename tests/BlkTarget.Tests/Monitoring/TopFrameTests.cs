using BlkTarget.Monitoring.Top;
using BlkTarget.Vhost.Stats;

namespace BlkTarget.Tests.Monitoring;

public class TopFrameTests
{
    private static long[] Buckets(params (ulong Ns, long Count)[] values)
    {
        var b = new long[QueueCounters.TrackedBuckets];
        foreach (var (ns, count) in values) b[LogLinearBuckets.BucketOf(ns)] += count;
        return b;
    }

    private static readonly TopSample Before = new(100.0,
        [
            new TopExport("db", 2, 1_000, 4 << 20, 0, 10_000_000, Buckets((10_000, 1_000)), 0),
            new TopExport("web", 1, 500, 0, 1 << 20, 1_000_000, Buckets((2_000, 500)), 0),
        ],
        [new TopReactor(0, 10.0, 2), new TopReactor(1, 3.0, 1)]);

    // Two seconds later: db did 20,000 more requests (19,800 at 10 us, 200 at 1 ms), 80 MiB read and 40 MiB written;
    // web 4,000 more at 2 us, 8 MiB written; idle has appeared and done nothing.
    private static readonly TopSample After = new(102.0,
        [
            new TopExport("idle", 1, 0, 0, 0, 0, Buckets(), 0),
            new TopExport("db", 2, 21_000, (4 << 20) + (80 << 20), 40 << 20, 10_000_000 + 19_800 * 10_000L + 200 * 1_000_000L,
                Buckets((10_000, 1_000 + 19_800), (1_000_000, 200)), 7),
            new TopExport("web", 1, 4_500, 0, (1 << 20) + (8 << 20), 1_000_000 + 4_000 * 2_000L, Buckets((2_000, 4_500)), 1),
        ],
        [new TopReactor(0, 11.5, 2), new TopReactor(1, 3.1, 1)]);

    [Fact]
    public void Rows_are_rates_over_the_interval_busiest_first()
    {
        var rows = TopFrame.Rows(Before, After);
        Assert.Equal(["db", "web", "idle"], rows.Select(r => r.Export));
        Assert.Equal(new TopRow("db", 10_000, 40, 20, 19.9, 10.239, 7, 2), rows[0]);
        Assert.Equal(new TopRow("web", 2_000, 0, 4, 2, 2.015, 1, 1), rows[1]);
        Assert.Equal(new TopRow("idle", 0, 0, 0, 0, 0, 0, 1), rows[2]);
    }

    [Fact]
    public void A_frame_renders_as_fixed_plain_text()
    {
        string frame = TopFrame.Render(Before, After, width: 100);
        Assert.Equal("""
            blktarget top - 3 export(s), interval 2.0 s - q or Ctrl+C quits
            +--------+-------+------------+-------------+---------+--------+-----------+--------+
            | EXPORT |  IOPS | READ MiB/s | WRITE MiB/s | MEAN us | P99 us | IN FLIGHT | QUEUES |
            |--------+-------+------------+-------------+---------+--------+-----------+--------|
            | db     | 10000 |       40.0 |        20.0 |    19.9 |   10.2 |         7 |      2 |
            | web    |  2000 |        0.0 |         4.0 |     2.0 |    2.0 |         1 |      1 |
            | idle   |     0 |        0.0 |         0.0 |     0.0 |    0.0 |         0 |      1 |
            +--------+-------+------------+-------------+---------+--------+-----------+--------+
            reactor 0: 75% busy, 2 queue(s)   reactor 1: 5% busy, 1 queue(s)

            """.Replace("\r\n", "\n"), frame);
    }
}
