using System.Diagnostics;
using BlkTarget.Vhost.Stats;

namespace BlkTarget.Vhost.Tests.Stats;

public class QueueCountersTests
{
    private static long Ticks(long ns) => (long)(ns * (Stopwatch.Frequency / 1e9));

    [Fact]
    public void Percentiles_are_the_top_of_the_bucket_holding_the_rank()
    {
        var c = new QueueCounters();
        for (int i = 0; i < 90; i++) { c.Begin(); c.Complete(IoOp.Read, 4096, IoErrorKind.None, Ticks(1_000)); }
        for (int i = 0; i < 9; i++) { c.Begin(); c.Complete(IoOp.Read, 4096, IoErrorKind.None, Ticks(10_000)); }
        c.Begin();
        c.Complete(IoOp.Read, 4096, IoErrorKind.None, Ticks(100_000));

        var latency = CounterSnapshot.Read(c).Latency(IoOp.Read);

        // 1000 ns lies in bucket 992..1007, 10 us in 9984..10239, 100 us in 98304..100351.
        Assert.Equal(new LatencySummary(100, 2_800, 1_007, 1_007, 10_239, 100_351, 100_351), latency);
    }

    [Fact]
    public void Values_below_64_ns_are_exact()
    {
        Span<long> counts = stackalloc long[128];
        for (int v = 1; v <= 60; v++) counts[v] = 1;
        Assert.Equal(30UL, LogLinearBuckets.Percentile(counts, 0.5));
        Assert.Equal(54UL, LogLinearBuckets.Percentile(counts, 0.9));
        Assert.Equal(60UL, LogLinearBuckets.Percentile(counts, 0.99));
        Assert.Equal(60UL, LogLinearBuckets.Max(counts));
        Assert.Equal(0UL, LogLinearBuckets.Percentile(stackalloc long[4], 0.5));
    }

    [Fact]
    public void Latencies_beyond_the_tracked_range_land_in_the_last_bucket()
    {
        var c = new QueueCounters();
        c.Begin();
        c.Complete(IoOp.Flush, 0, IoErrorKind.None, Ticks(200_000_000_000));
        Assert.Equal(QueueCounters.MaxTrackedNanoseconds, CounterSnapshot.Read(c).Latency(IoOp.Flush).Max);
        Assert.Equal(68_719_476_735UL, QueueCounters.MaxTrackedNanoseconds);
    }

    [Fact]
    public void Ops_bytes_and_errors_are_counted_per_op_and_failed_requests_move_no_bytes()
    {
        var c = new QueueCounters();
        foreach (var (op, bytes, error) in new[]
        {
            (IoOp.Read, 4096UL, IoErrorKind.None), (IoOp.Read, 8192UL, IoErrorKind.None), (IoOp.Read, 512UL, IoErrorKind.OutOfRange),
            (IoOp.Write, 65536UL, IoErrorKind.None), (IoOp.Write, 4096UL, IoErrorKind.IoError), (IoOp.Discard, 1UL << 20, IoErrorKind.Unsupported),
        })
        {
            c.Begin();
            c.Complete(op, bytes, error, Ticks(1_000));
        }
        c.Begin();
        var s = CounterSnapshot.Read(c);
        Assert.Equal(3, s.Ops(IoOp.Read));
        Assert.Equal(12288, s.Bytes(IoOp.Read));
        Assert.Equal(1, s.Errors(IoOp.Read, IoErrorKind.OutOfRange));
        Assert.Equal(2, s.Ops(IoOp.Write));
        Assert.Equal(65536, s.Bytes(IoOp.Write));
        Assert.Equal(1, s.Errors(IoOp.Write, IoErrorKind.IoError));
        Assert.Equal(0, s.Bytes(IoOp.Discard));
        Assert.Equal(1, s.Errors(IoOp.Discard, IoErrorKind.Unsupported));
        Assert.Equal(6, s.TotalOps);
        Assert.Equal(1, s.InFlight);
        Assert.Equal(1_000, s.Latency(null).Mean);
    }

    [Fact]
    public void Snapshots_of_several_queues_add_up_and_a_baseline_subtracts_to_what_came_after()
    {
        var q0 = new QueueCounters();
        var q1 = new QueueCounters();
        void Io(QueueCounters q, IoOp op, ulong bytes) { q.Begin(); q.Complete(op, bytes, IoErrorKind.None, Ticks(2_000)); }
        Io(q0, IoOp.Read, 4096);
        Io(q1, IoOp.Read, 4096);
        Io(q1, IoOp.Write, 512);
        var baseline = CounterSnapshot.Read(q0).Add(CounterSnapshot.Read(q1));
        Assert.Equal(2, baseline.Ops(IoOp.Read));
        Assert.Equal(8192, baseline.Bytes(IoOp.Read));

        Io(q0, IoOp.Write, 1024);
        Io(q1, IoOp.Flush, 0);
        var now = CounterSnapshot.Read(q0).Add(CounterSnapshot.Read(q1));
        var since = now.Minus(baseline);

        Assert.Equal(0, since.Ops(IoOp.Read));
        Assert.Equal(1, since.Ops(IoOp.Write));
        Assert.Equal(1024, since.Bytes(IoOp.Write));
        Assert.Equal(1, since.Ops(IoOp.Flush));
        Assert.Equal(2, since.Begun);
        Assert.Equal(new LatencySummary(2, 2_000, 2_015, 2_015, 2_015, 2_015, 2_015), since.Latency(null));
        Assert.Equal(5, now.TotalOps);   // the baseline is unchanged
    }
}
