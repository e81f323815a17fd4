using System.Diagnostics;

namespace BlkTarget.Vhost.Qos;

/// <summary>What a request asks of the limits: data read, data written, or nothing (flush, discard, ...).</summary>
public enum QosDirection : byte
{
    /// <summary>Takes no tokens.</summary>
    None,
    Read,
    Write,
}

/// <summary>
/// The limits of one export or one disk as its queues apply them: one set of <see cref="TokenBucket"/>s shared by
/// every queue of the export (or of every export of the disk), on whichever reactor each queue runs.
/// <para>
/// Why one shared bucket and not one per queue or per reactor: a limit divided among queues caps a guest that puts
/// all its load on one queue at a fraction of its limit, and per-reactor buckets have the same flaw when the queues
/// sit on several reactors. The shared bucket is a single 64-bit word per rate updated by compare-and-swap (see
/// <see cref="TokenBucket"/>), so there is no lock; the cost is one contended cache line per limited export, paid
/// only by exports that have limits (an unlimited one reads one null reference per request).
/// </para>
/// <para>
/// <see cref="Set"/> (RPC, config reload) swaps in a new immutable set of buckets at once; a reactor that read the old
/// set finishes that request with it. Buckets start full. Nothing here allocates per request.
/// </para>
/// </summary>
public sealed class QosLimiter
{
    private sealed class Buckets(QosLimits limits, long frequency, long now)
    {
        public readonly TokenBucket? ReadIops = Make(limits.ReadIops, limits, frequency, now);
        public readonly TokenBucket? WriteIops = Make(limits.WriteIops, limits, frequency, now);
        public readonly TokenBucket? TotalIops = Make(limits.TotalIops, limits, frequency, now);
        public readonly TokenBucket? ReadBytes = Make(limits.ReadBytesPerSecond, limits, frequency, now);
        public readonly TokenBucket? WriteBytes = Make(limits.WriteBytesPerSecond, limits, frequency, now);
        public readonly TokenBucket? TotalBytes = Make(limits.TotalBytesPerSecond, limits, frequency, now);

        private static TokenBucket? Make(ulong rate, QosLimits limits, long frequency, long now) =>
            rate == 0 ? null : new TokenBucket(rate, (ulong)((UInt128)rate * limits.EffectiveBurstMilliseconds / 1000), frequency, now);

        public long Wait(long now, QosDirection direction, ulong bytes)
        {
            bool read = direction == QosDirection.Read;
            long wait = Max(0, read ? ReadIops : WriteIops, now, 1);
            wait = Max(wait, TotalIops, now, 1);
            wait = Max(wait, read ? ReadBytes : WriteBytes, now, bytes);
            return Max(wait, TotalBytes, now, bytes);
        }

        public void Take(long now, QosDirection direction, ulong bytes)
        {
            bool read = direction == QosDirection.Read;
            (read ? ReadIops : WriteIops)?.Take(now, 1);
            TotalIops?.Take(now, 1);
            (read ? ReadBytes : WriteBytes)?.Take(now, bytes);
            TotalBytes?.Take(now, bytes);
        }

        private static long Max(long wait, TokenBucket? bucket, long now, ulong units) =>
            bucket is null ? wait : Math.Max(wait, bucket.WaitTicks(now, units));
    }

    /// <summary>Limiters that have limits now, process-wide: while 0, device models skip even looking at requests.</summary>
    private static int s_limited;
    private static int s_generation;
    private readonly long _frequency;
    private Buckets? _buckets;
    private QosLimits _limits = QosLimits.None;

    /// <summary>A limiter without limits; <paramref name="frequency"/>: ticks per second of the clock callers pass
    /// (default: <see cref="Stopwatch"/>'s).</summary>
    public QosLimiter(long frequency = 0) => _frequency = frequency > 0 ? frequency : Stopwatch.Frequency;

    /// <summary>The limits in effect.</summary>
    public QosLimits Limits => Volatile.Read(ref _limits);

    /// <summary>True when some rate is limited.</summary>
    public bool IsLimited => Volatile.Read(ref _buckets) is not null;

    /// <summary>Changes with every <see cref="Set"/> anywhere in the process: a queue holding a request back asks again
    /// at once after a change rather than waiting out a wait computed under the old limits.</summary>
    public static int Generation => Volatile.Read(ref s_generation);

    /// <summary>True when some limiter in the process has limits (one shared read on the data path).</summary>
    public static bool AnyLimited => Volatile.Read(ref s_limited) != 0;

    /// <summary>Applies <paramref name="limits"/> from now on (any thread); the buckets start full.
    /// <paramref name="now"/>: the clock reading (default: <see cref="Stopwatch.GetTimestamp"/>).</summary>
    public void Set(QosLimits limits, long? now = null)
    {
        Volatile.Write(ref _limits, limits);
        var next = limits.IsUnlimited ? null : new Buckets(limits, _frequency, now ?? Stopwatch.GetTimestamp());
        var previous = Interlocked.Exchange(ref _buckets, next);
        if (previous is null && next is not null) Interlocked.Increment(ref s_limited);
        else if (previous is not null && next is null) Interlocked.Decrement(ref s_limited);
        // After the new buckets are in place: a queue that sees the new generation must ask the new buckets, or it
        // would remember the old wait under the new generation.
        Interlocked.Increment(ref s_generation);
    }

    /// <summary>
    /// Admits one request of <paramref name="bytes"/> bytes against every limit of <paramref name="first"/> and
    /// <paramref name="second"/> (an export's and its disk's; either may be null): either it takes its tokens from all
    /// of them, or from none and <paramref name="waitTicks"/> says how many clock ticks to wait before asking again.
    /// </summary>
    public static bool TryAdmit(QosLimiter? first, QosLimiter? second, long now, QosDirection direction, ulong bytes, out long waitTicks)
    {
        waitTicks = 0;
        if (direction == QosDirection.None) return true;
        var a = first is null ? null : Volatile.Read(ref first._buckets);
        var b = second is null ? null : Volatile.Read(ref second._buckets);
        if (a is null && b is null) return true;
        long wait = a?.Wait(now, direction, bytes) ?? 0;
        if (b is not null) wait = Math.Max(wait, b.Wait(now, direction, bytes));
        if (wait > 0)
        {
            waitTicks = wait;
            return false;
        }
        a?.Take(now, direction, bytes);
        b?.Take(now, direction, bytes);
        return true;
    }
}
