using System.Numerics;

namespace BlkTarget.Bench;

/// <summary>
/// Latencies in nanoseconds, kept as counts in log-linear buckets (the HdrHistogram idea, no sample list):
/// values below 64 ns have a bucket each; above that every power of two is split into 32 equal buckets, so a
/// reported percentile is within ~3% of the true value. Fixed size (1,920 counters), recording allocates
/// nothing; one histogram per thread, merged after the run.
/// </summary>
public sealed class LatencyHistogram
{
    private const int SubBucketBits = 5;
    private const int SubBuckets = 1 << SubBucketBits;          // 32 per power of two
    private const int LinearLimit = 2 * SubBuckets;             // values below this are exact
    public const int BucketCount = (64 - SubBucketBits) * SubBuckets + SubBuckets; // covers all of ulong

    private readonly long[] _counts = new long[BucketCount];

    public long Count { get; private set; }
    /// <summary>Sum of all recorded values (for the exact mean).</summary>
    public double Sum { get; private set; }
    public ulong Min { get; private set; } = ulong.MaxValue;
    public ulong Max { get; private set; }

    public double Mean => Count == 0 ? 0 : Sum / Count;

    public void Record(ulong nanoseconds)
    {
        _counts[BucketOf(nanoseconds)]++;
        Count++;
        Sum += nanoseconds;
        if (nanoseconds < Min) Min = nanoseconds;
        if (nanoseconds > Max) Max = nanoseconds;
    }

    public void Reset()
    {
        Array.Clear(_counts);
        Count = 0;
        Sum = 0;
        Min = ulong.MaxValue;
        Max = 0;
    }

    public void Add(LatencyHistogram other)
    {
        for (int i = 0; i < BucketCount; i++) _counts[i] += other._counts[i];
        Count += other.Count;
        Sum += other.Sum;
        if (other.Count > 0)
        {
            Min = Math.Min(Min, other.Min);
            Max = Math.Max(Max, other.Max);
        }
    }

    /// <summary>The value at quantile <paramref name="q"/> (0..1): the highest value of the bucket holding the
    /// sample of that rank, clamped to the recorded range. 0 when empty.</summary>
    public ulong Percentile(double q)
    {
        if (Count == 0) return 0;
        long rank = (long)Math.Ceiling(Math.Clamp(q, 0, 1) * Count);
        if (rank < 1) rank = 1;
        long seen = 0;
        for (int i = 0; i < BucketCount; i++)
        {
            seen += _counts[i];
            if (seen >= rank) return Math.Clamp(HighestOf(i), Min, Max);
        }
        return Max;
    }

    internal static int BucketOf(ulong value)
    {
        if (value < LinearLimit) return (int)value;
        int msb = 63 - BitOperations.LeadingZeroCount(value);
        int shift = msb - SubBucketBits;
        return (shift + 1) * SubBuckets + (int)(value >> shift) - SubBuckets;
    }

    internal static ulong LowestOf(int bucket)
    {
        if (bucket < LinearLimit) return (ulong)bucket;
        int shift = bucket / SubBuckets - 1;
        ulong sub = (ulong)(bucket % SubBuckets + SubBuckets);
        return sub << shift;
    }

    internal static ulong HighestOf(int bucket)
    {
        if (bucket < LinearLimit) return (ulong)bucket;
        int shift = bucket / SubBuckets - 1;
        return LowestOf(bucket) + ((1UL << shift) - 1);
    }
}
