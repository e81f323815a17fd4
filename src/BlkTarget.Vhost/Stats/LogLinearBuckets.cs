using System.Numerics;

namespace BlkTarget.Vhost.Stats;

/// <summary>
/// The bucket layout of every latency histogram in BlkTarget (the HdrHistogram idea with fixed precision): values
/// below 64 have a bucket each; above that every power of two is split into 32 equal buckets, so any value lies in
/// a bucket at most ~3% wide relative to it. Bucket <c>i</c> covers <see cref="LowestOf"/>(i)..<see cref="HighestOf"/>(i)
/// inclusive; buckets are contiguous and ordered. Pure arithmetic: no allocation, no state.
/// </summary>
public static class LogLinearBuckets
{
    private const int SubBucketBits = 5;
    private const int SubBuckets = 1 << SubBucketBits;          // 32 per power of two
    private const int LinearLimit = 2 * SubBuckets;             // values below this are exact
    /// <summary>Buckets needed to cover every <see cref="ulong"/> (1,920).</summary>
    public const int BucketCount = (64 - SubBucketBits) * SubBuckets + SubBuckets;

    /// <summary>The bucket holding <paramref name="value"/>, 0..<see cref="BucketCount"/>-1.</summary>
    public static int BucketOf(ulong value)
    {
        if (value < LinearLimit) return (int)value;
        int msb = 63 - BitOperations.LeadingZeroCount(value);
        int shift = msb - SubBucketBits;
        return (shift + 1) * SubBuckets + (int)(value >> shift) - SubBuckets;
    }

    /// <summary>Smallest value of <paramref name="bucket"/>.</summary>
    public static ulong LowestOf(int bucket)
    {
        if (bucket < LinearLimit) return (ulong)bucket;
        int shift = bucket / SubBuckets - 1;
        ulong sub = (ulong)(bucket % SubBuckets + SubBuckets);
        return sub << shift;
    }

    /// <summary>Largest value of <paramref name="bucket"/>.</summary>
    public static ulong HighestOf(int bucket)
    {
        if (bucket < LinearLimit) return (ulong)bucket;
        int shift = bucket / SubBuckets - 1;
        return LowestOf(bucket) + ((1UL << shift) - 1);
    }

    /// <summary>
    /// The value at quantile <paramref name="q"/> (0..1) of the counts in <paramref name="counts"/> (indexed by
    /// bucket): the highest value of the bucket holding the sample of rank ceil(q * total). 0 when empty.
    /// </summary>
    public static ulong Percentile(ReadOnlySpan<long> counts, double q)
    {
        long total = 0;
        foreach (long c in counts) total += c;
        if (total <= 0) return 0;
        long rank = Math.Max(1, (long)Math.Ceiling(Math.Clamp(q, 0, 1) * total));
        long seen = 0;
        for (int i = 0; i < counts.Length; i++)
        {
            seen += counts[i];
            if (seen >= rank) return HighestOf(i);
        }
        return HighestOf(counts.Length - 1);
    }

    /// <summary>The highest value of the last non-empty bucket (the maximum, to bucket precision); 0 when empty.</summary>
    public static ulong Max(ReadOnlySpan<long> counts)
    {
        for (int i = counts.Length - 1; i >= 0; i--)
            if (counts[i] > 0) return HighestOf(i);
        return 0;
    }
}
