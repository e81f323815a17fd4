namespace BlkTarget.Vhost.Stats;

/// <summary>
/// A copy of one or more <see cref="QueueCounters"/> taken off the data path: sums (<see cref="Add"/>) make export,
/// queue and disk views, differences (<see cref="Minus"/>) make rates and resets. Mutable, not thread-safe; about
/// 50 KB each (the histograms), allocated by readers only.
/// </summary>
public sealed class CounterSnapshot
{
    private readonly long[] _totals = new long[IoOps.Count * QueueCounters.OpStride];
    private readonly long[] _buckets = new long[IoOps.Count * QueueCounters.TrackedBuckets];

    /// <summary>Requests taken off rings (completed ones included).</summary>
    public long Begun { get; private set; }

    /// <summary>Reads <paramref name="counters"/> (see <see cref="QueueCounters"/> for what is consistent).</summary>
    public static CounterSnapshot Read(QueueCounters counters)
    {
        var s = new CounterSnapshot();
        s.Begun = counters.CopyTo(s._totals, s._buckets);
        return s;
    }

    /// <summary>Adds <paramref name="other"/> into this one; returns this.</summary>
    public CounterSnapshot Add(CounterSnapshot other)
    {
        Combine(other, 1);
        return this;
    }

    /// <summary>A new snapshot: this one less <paramref name="baseline"/> (an earlier snapshot of the same counters).</summary>
    public CounterSnapshot Minus(CounterSnapshot baseline)
    {
        var s = new CounterSnapshot().Add(this);
        s.Combine(baseline, -1);
        return s;
    }

    private void Combine(CounterSnapshot other, long sign)
    {
        Begun += sign * other.Begun;
        for (int i = 0; i < _totals.Length; i++) _totals[i] += sign * other._totals[i];
        for (int i = 0; i < _buckets.Length; i++) _buckets[i] += sign * other._buckets[i];
    }

    private long Field(IoOp op, int field) => _totals[(int)op * QueueCounters.OpStride + field];

    /// <summary>Completed requests of <paramref name="op"/>, failed ones included.</summary>
    public long Ops(IoOp op) => Field(op, QueueCounters.OpsField);

    /// <summary>Bytes moved by the successful requests of <paramref name="op"/>.</summary>
    public long Bytes(IoOp op) => Field(op, QueueCounters.BytesField);

    /// <summary>Failed requests of <paramref name="op"/> with <paramref name="kind"/>.</summary>
    public long Errors(IoOp op, IoErrorKind kind) => kind == IoErrorKind.None ? 0 : Field(op, QueueCounters.ErrorsField + (int)kind);

    /// <summary>Sum of the latencies of <paramref name="op"/>'s completed requests, in nanoseconds.</summary>
    public long LatencySumNanoseconds(IoOp op) => Field(op, QueueCounters.LatencyField);

    /// <summary>Completed requests of every op.</summary>
    public long TotalOps => IoOps.All.Sum(Ops);

    /// <summary>Requests begun and not completed (never negative).</summary>
    public long InFlight => Math.Max(0, Begun - TotalOps);

    /// <summary>The histogram of <paramref name="op"/> (counts per <see cref="LogLinearBuckets"/> bucket), or, for
    /// null, of every op together (a new array).</summary>
    public ReadOnlySpan<long> Buckets(IoOp? op)
    {
        if (op is IoOp o) return _buckets.AsSpan((int)o * QueueCounters.TrackedBuckets, QueueCounters.TrackedBuckets);
        var all = new long[QueueCounters.TrackedBuckets];
        for (int i = 0; i < _buckets.Length; i++) all[i % QueueCounters.TrackedBuckets] += _buckets[i];
        return all;
    }

    /// <summary>Latency summary of <paramref name="op"/> (null: every op), in nanoseconds.</summary>
    public LatencySummary Latency(IoOp? op)
    {
        var buckets = Buckets(op);
        long count = op is IoOp o ? Ops(o) : TotalOps;
        long sum = op is IoOp p ? LatencySumNanoseconds(p) : IoOps.All.Sum(LatencySumNanoseconds);
        return LatencySummary.From(buckets, count, sum);
    }
}
