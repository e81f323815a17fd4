namespace BlkTarget.Vhost.Stats;

/// <summary>Latency of a set of requests in nanoseconds: the exact mean, and percentiles and maximum to histogram
/// precision (the highest value of the bucket, within ~3%). All 0 when <see cref="Count"/> is 0.</summary>
public readonly record struct LatencySummary(long Count, double Mean, ulong P50, ulong P90, ulong P99, ulong P999, ulong Max)
{
    /// <summary>Summarises <paramref name="buckets"/> (<see cref="LogLinearBuckets"/> counts) of
    /// <paramref name="count"/> requests whose latencies sum to <paramref name="sumNanoseconds"/>.</summary>
    public static LatencySummary From(ReadOnlySpan<long> buckets, long count, long sumNanoseconds) => new(
        count,
        count > 0 ? (double)sumNanoseconds / count : 0,
        LogLinearBuckets.Percentile(buckets, 0.50),
        LogLinearBuckets.Percentile(buckets, 0.90),
        LogLinearBuckets.Percentile(buckets, 0.99),
        LogLinearBuckets.Percentile(buckets, 0.999),
        LogLinearBuckets.Max(buckets));
}
