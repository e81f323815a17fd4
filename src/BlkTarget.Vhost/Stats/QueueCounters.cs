namespace BlkTarget.Vhost.Stats;

/// <summary>
/// The request counters of one queue for one disk (a virtio-blk queue; a virtio-scsi request queue for one LUN).
/// <para>
/// Single writer: only the reactor that runs the queue calls <see cref="Begin"/> and <see cref="Complete"/> (a queue
/// restarted on another reactor after a reconnect takes over only after the old one stopped). Plain stores, no lock,
/// no allocation, no interlocked instruction. Any thread may read (<see cref="CounterSnapshot.Read"/>): every field is
/// a naturally aligned 64-bit value, so each read is whole (x64 and arm64 never tear it), but a snapshot is not
/// atomic across fields: a request completing meanwhile may show in its op count and not yet in its histogram.
/// Differences between two snapshots are exact once the queue is idle. Nothing ever resets: readers subtract a
/// baseline snapshot instead.
/// </para>
/// Per op (<see cref="IoOp"/>): completed requests (failed ones included), bytes of the successful ones, the sum of
/// their latencies in nanoseconds, failures by <see cref="IoErrorKind"/>, and a latency histogram in
/// <see cref="LogLinearBuckets"/> up to <see cref="MaxTrackedNanoseconds"/> (longer ones land in the last bucket).
/// Latency runs from when the queue took the request off the avail ring to when it was pushed to the used ring.
/// </summary>
public sealed class QueueCounters
{
    /// <summary>Histogram buckets per op: values up to 2^36 ns (68.7 s) keep full precision.</summary>
    public const int TrackedBuckets = 1024;
    /// <summary>Latencies above this (ns) are counted in the last bucket.</summary>
    public static readonly ulong MaxTrackedNanoseconds = LogLinearBuckets.HighestOf(TrackedBuckets - 1);

    // Per op: [ops, bytes, latency sum, errors by kind (index = kind, 0 unused)], padded to a cache line pair.
    internal const int OpsField = 0;
    internal const int BytesField = 1;
    internal const int LatencyField = 2;
    internal const int ErrorsField = 3;
    internal const int OpStride = 16;
    /// <summary>Longs of padding before and after, so two queues' counters on different reactors share no cache line.</summary>
    private const int Pad = 8;

    private readonly long[] _totals = new long[Pad + IoOps.Count * OpStride + Pad];
    private readonly long[] _buckets = new long[IoOps.Count * TrackedBuckets];
    private readonly long[] _begun = new long[Pad + 1 + Pad];

    /// <summary>A request was taken from the ring (counts it as in flight until <see cref="Complete"/>). Reactor only.</summary>
    public void Begin() => _begun[Pad]++;

    /// <summary>
    /// A request begun earlier finished. <paramref name="bytes"/>: data it moved (counted only without an error);
    /// <paramref name="latencyTicks"/>: Stopwatch ticks since it was taken. Reactor only.
    /// </summary>
    public void Complete(IoOp op, ulong bytes, IoErrorKind error, long latencyTicks)
    {
        ulong ns = LatencyClock.ToNanoseconds(latencyTicks);
        int at = Pad + (int)op * OpStride;
        long[] totals = _totals;
        totals[at + OpsField]++;
        totals[at + LatencyField] += (long)ns;
        if (error == IoErrorKind.None) totals[at + BytesField] += (long)bytes;
        else totals[at + ErrorsField + (int)error]++;
        _buckets[(int)op * TrackedBuckets + LogLinearBuckets.BucketOf(Math.Min(ns, MaxTrackedNanoseconds))]++;
    }

    /// <summary>Copies the totals into <paramref name="totals"/> (IoOps.Count * OpStride longs), the histograms into
    /// <paramref name="buckets"/>, and returns the begun count, read last (so begun ≥ completed in the copy).</summary>
    internal long CopyTo(Span<long> totals, Span<long> buckets)
    {
        _totals.AsSpan(Pad, IoOps.Count * OpStride).CopyTo(totals);
        _buckets.CopyTo(buckets);
        return Volatile.Read(ref _begun[Pad]);
    }
}
