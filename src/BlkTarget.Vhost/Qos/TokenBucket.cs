namespace BlkTarget.Vhost.Qos;

/// <summary>
/// A token bucket kept as one 64-bit number, so that reactors on several threads share it without a lock: the
/// "theoretical arrival time" of the generic cell rate algorithm (ATM's GCRA), i.e. the clock reading at which the
/// bucket will be full again. Taking n units moves it forward by n / rate seconds; the bucket's fill at time t is
/// burst - (tat - t) worth of units. Refill is therefore exact at any clock granularity (no refill timer, no
/// rounding per tick), and a take is one compare-and-swap. Times are clock ticks of the caller's monotonic clock
/// (<see cref="System.Diagnostics.Stopwatch"/> ticks on the data path; tests pass their own).
/// <para>
/// A request may take more units than the burst holds (a 1 MiB write under a 512 KiB/s cap): it is let through
/// once the bucket is full and drives it into debt, which later requests wait off, as QEMU's leaky bucket does.
/// Otherwise it could never pass.
/// </para>
/// </summary>
public sealed class TokenBucket
{
    /// <summary>Costs are capped here so that adding one to a clock reading never overflows (over 100 years at 1 GHz).</summary>
    private const long MaxCostTicks = long.MaxValue / 4;
    private readonly ulong _rate;
    private readonly long _frequency;
    private readonly long _burstTicks;
    /// <summary>Clock reading at which the bucket is full again; at or before now: it is full.</summary>
    private long _fullAt;

    /// <summary>A full bucket refilling at <paramref name="ratePerSecond"/> units per second and holding
    /// <paramref name="burst"/> units (at least one); <paramref name="frequency"/>: clock ticks per second;
    /// <paramref name="now"/>: the clock reading at creation.</summary>
    public TokenBucket(ulong ratePerSecond, ulong burst, long frequency, long now)
    {
        ArgumentOutOfRangeException.ThrowIfZero(ratePerSecond);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(frequency);
        _rate = ratePerSecond;
        _frequency = frequency;
        Burst = Math.Max(1, burst);
        _burstTicks = CostTicks(Burst);
        _fullAt = now;
    }

    /// <summary>Units per second.</summary>
    public ulong Rate => _rate;
    /// <summary>Units the full bucket holds.</summary>
    public ulong Burst { get; }

    /// <summary>Clock ticks that <paramref name="units"/> units take to refill.</summary>
    public long CostTicks(ulong units)
    {
        UInt128 ticks = (UInt128)units * (ulong)_frequency / _rate;
        return ticks > MaxCostTicks ? MaxCostTicks : (long)ticks;
    }

    /// <summary>0 when <paramref name="units"/> may be taken at <paramref name="now"/>; otherwise the clock ticks until
    /// they may (the bucket does not change). Units beyond the burst need a full bucket.</summary>
    public long WaitTicks(long now, ulong units)
    {
        long debt = Volatile.Read(ref _fullAt) - now;
        if (debt <= 0) return 0;
        long room = Math.Max(0, _burstTicks - CostTicks(units));
        return debt <= room ? 0 : debt - room;
    }

    /// <summary>Takes <paramref name="units"/> at <paramref name="now"/>, whether or not the bucket holds them (callers
    /// check <see cref="WaitTicks"/> first; a race between two reactors overdraws by one request at most, which later
    /// requests pay back). Lock-free: one compare-and-swap, retried only when another thread took meanwhile.</summary>
    public void Take(long now, ulong units)
    {
        long cost = CostTicks(units);
        long seen = Volatile.Read(ref _fullAt);
        while (true)
        {
            long next = Math.Max(seen, now) + cost;
            long was = Interlocked.CompareExchange(ref _fullAt, next, seen);
            if (was == seen) return;
            seen = was;
        }
    }

    /// <summary>Units in the bucket at <paramref name="now"/> (negative while in debt); for tests and display.</summary>
    public double Available(long now)
    {
        long debt = Math.Max(0, Volatile.Read(ref _fullAt) - now);
        return (double)(_burstTicks - debt) * _rate / _frequency;
    }
}
