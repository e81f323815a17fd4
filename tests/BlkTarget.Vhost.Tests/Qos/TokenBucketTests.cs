using BlkTarget.Vhost.Qos;

namespace BlkTarget.Vhost.Tests.Qos;

/// <summary>The limiter's arithmetic on a fake clock of one tick per microsecond.</summary>
public class TokenBucketTests
{
    private const long Hz = 1_000_000;

    /// <summary>A client that always has a request of <paramref name="bytes"/> ready and asks every
    /// <paramref name="stepTicks"/> from 0 to <paramref name="endTicks"/>; returns how many it got through.</summary>
    private static long Drive(QosLimiter limiter, QosDirection direction, ulong bytes, long endTicks, long stepTicks = 10)
    {
        long admitted = 0;
        for (long t = 0; t <= endTicks && admitted < 1_000_000; t += stepTicks)
            admitted += Drain(limiter, null, t, direction, bytes);
        return admitted;
    }

    /// <summary>Admits at one instant until refused (bounded, so that a broken limiter fails rather than hangs).</summary>
    private static long Drain(QosLimiter first, QosLimiter? second, long now, QosDirection direction = QosDirection.Read, ulong bytes = 4096)
    {
        long admitted = 0;
        while (admitted < 1_000_000 && QosLimiter.TryAdmit(first, second, now, direction, bytes, out _)) admitted++;
        return admitted;
    }

    private static QosLimiter Limiter(QosLimits limits)
    {
        var limiter = new QosLimiter(Hz);
        limiter.Set(limits, now: 0);
        return limiter;
    }

    [Fact]
    public void A_steady_client_gets_the_rate_plus_one_burst()
    {
        var limiter = Limiter(new QosLimits { TotalIops = 2000, BurstMilliseconds = 50 });
        long got = Drive(limiter, QosDirection.Read, 4096, endTicks: 10 * Hz);
        // 10 s at 2000/s, plus the 100 requests the full bucket held at the start.
        Assert.InRange(got, 20_000 + 100, 20_000 + 101);
    }

    [Fact]
    public void The_default_burst_is_one_seconds_worth_and_an_idle_bucket_refills_only_to_it()
    {
        var limiter = Limiter(new QosLimits { WriteIops = 500 });
        long first = Drain(limiter, null, 0, QosDirection.Write, 512);
        Assert.Equal(500, first);
        Assert.False(QosLimiter.TryAdmit(limiter, null, 0, QosDirection.Write, 512, out long wait));
        Assert.Equal(Hz / 500, wait);
        // An hour idle: the bucket holds one burst again, not an hour's worth.
        long second = Drain(limiter, null, 3600 * Hz, QosDirection.Write, 512);
        Assert.Equal(500, second);
    }

    [Fact]
    public void Refill_is_exact_at_any_clock_granularity()
    {
        // 3 per second does not divide the clock: the wait it reports is when the next one really passes.
        var bucket = new TokenBucket(3, 1, Hz, now: 0);
        bucket.Take(0, 1);
        long wait = bucket.WaitTicks(0, 1);
        Assert.Equal(333_333, wait);
        Assert.NotEqual(0, bucket.WaitTicks(wait - 1, 1));
        Assert.Equal(0, bucket.WaitTicks(wait, 1));
        // Half a token after a take is not a token; the remaining wait is the other half.
        var fine = new TokenBucket(1000, 1, Hz, now: 0);
        fine.Take(0, 1);
        Assert.Equal(500, fine.WaitTicks(500, 1));
        // Polled coarsely (every 7 ms) or finely (every 10 us), a greedy client ends up at the same count.
        var coarse = Limiter(new QosLimits { ReadIops = 777, BurstMilliseconds = 100 });
        var dense = Limiter(new QosLimits { ReadIops = 777, BurstMilliseconds = 100 });
        const long end = 715 * 7000;   // both clients ask at the last instant
        long a = Drive(coarse, QosDirection.Read, 4096, end, stepTicks: 7000);
        long b = Drive(dense, QosDirection.Read, 4096, end, stepTicks: 10);
        long expected = end * 777 / Hz + 77;
        Assert.InRange(a, expected - 1, expected + 1);
        Assert.InRange(Math.Abs(a - b), 0, 1);
    }

    [Fact]
    public void Zero_means_unlimited()
    {
        var none = Limiter(QosLimits.None);
        Assert.False(none.IsLimited);
        for (int i = 0; i < 100_000; i++) Assert.True(QosLimiter.TryAdmit(none, null, 0, QosDirection.Write, 1 << 20, out _));
        // Only reads limited: writes are not, and requests that move no data (flush, discard) never are.
        var reads = Limiter(new QosLimits { ReadIops = 1, BurstMilliseconds = 1 });
        Assert.True(QosLimiter.TryAdmit(reads, null, 0, QosDirection.Read, 4096, out _));
        Assert.False(QosLimiter.TryAdmit(reads, null, 0, QosDirection.Read, 4096, out _));
        for (int i = 0; i < 1000; i++)
        {
            Assert.True(QosLimiter.TryAdmit(reads, null, 0, QosDirection.Write, 4096, out _));
            Assert.True(QosLimiter.TryAdmit(reads, null, 0, QosDirection.None, 0, out _));
        }
        // Clearing the limits (all zero) lifts them at once.
        reads.Set(QosLimits.None, now: 0);
        Assert.True(QosLimiter.TryAdmit(reads, null, 0, QosDirection.Read, 4096, out _));
    }

    [Fact]
    public void A_request_larger_than_the_burst_still_progresses_at_the_byte_rate()
    {
        // 100 KB/s with a 10 ms burst (1000 bytes): every 64 KiB request is 65x the burst.
        var limiter = Limiter(new QosLimits { TotalBytesPerSecond = 100_000, BurstMilliseconds = 10 });
        long got = Drive(limiter, QosDirection.Write, 65536, endTicks: 20 * Hz, stepTicks: 1000);
        // 2 MB in 20 s is 30.5 requests; the first passes on the full bucket.
        Assert.InRange(got, 30, 32);
    }

    [Fact]
    public void Byte_and_request_limits_apply_together_and_the_tighter_one_wins()
    {
        var limiter = Limiter(new QosLimits { ReadIops = 1000, ReadBytesPerSecond = 1_000_000, BurstMilliseconds = 100 });
        // 64 KiB reads: the byte limit allows ~15/s, far below 1000 IOPS.
        long big = Drive(limiter, QosDirection.Read, 65536, endTicks: 10 * Hz, stepTicks: 100);
        Assert.InRange(big, 10_000_000 / 65536 + 1, 10_100_000 / 65536 + 2);
        // 512-byte reads: the IOPS limit is the tighter one.
        var small = Limiter(new QosLimits { ReadIops = 1000, ReadBytesPerSecond = 1_000_000, BurstMilliseconds = 100 });
        long got = Drive(small, QosDirection.Read, 512, endTicks: 10 * Hz, stepTicks: 100);
        Assert.InRange(got, 10_000 + 100, 10_000 + 101);
    }

    [Fact]
    public void An_export_and_its_disk_both_limit_and_a_refusal_takes_no_tokens_from_either()
    {
        var export = Limiter(new QosLimits { TotalIops = 100, BurstMilliseconds = 1000 });
        var disk = Limiter(new QosLimits { TotalIops = 10, BurstMilliseconds = 1000 });
        long got = Drain(export, disk, 0);
        Assert.Equal(10, got);
        // The export's bucket lost only the 10 the disk let through: another export of the same disk is refused,
        // but the export alone still has 90.
        long exportOnly = Drain(export, null, 0);
        Assert.Equal(90, exportOnly);
    }

    [Fact]
    public void Two_threads_sharing_a_bucket_get_the_rate_between_them()
    {
        var bucket = new TokenBucket(1000, 1000, Hz, now: 0);
        long total = 0;
        // Both hammer one fixed instant: exactly the burst passes however the CAS races fall, give or take one per thread.
        Parallel.For(0, 2, _ =>
        {
            for (int i = 0; i < 100_000; i++)
                if (bucket.WaitTicks(0, 1) == 0)
                {
                    bucket.Take(0, 1);
                    Interlocked.Increment(ref total);
                }
        });
        Assert.InRange(total, 1000, 1002);
    }
}
