using System.Diagnostics;

namespace BlkTarget.Vhost.Stats;

/// <summary>Converts <see cref="Stopwatch.GetTimestamp"/> differences to nanoseconds (identity where the timestamp
/// already counts nanoseconds, as on Linux).</summary>
public static class LatencyClock
{
    private static readonly bool Nanosecond = Stopwatch.Frequency == 1_000_000_000;
    private static readonly double NanosecondsPerTick = 1e9 / Stopwatch.Frequency;

    /// <summary>Nanoseconds in <paramref name="ticks"/> Stopwatch ticks; negative input gives 0.</summary>
    public static ulong ToNanoseconds(long ticks)
    {
        if (ticks <= 0) return 0;
        return Nanosecond ? (ulong)ticks : (ulong)(ticks * NanosecondsPerTick);
    }
}
