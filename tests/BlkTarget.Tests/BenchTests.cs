using BlkTarget.Bench;
using BlkTarget.Storage.Ram;
using BlkTarget.Vhost.Blk;
using BlkTarget.Vhost.Protocol;
using BlkTarget.Vhost.Reactor;
using BlkTarget.Vhost.Stats;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlkTarget.Tests;

/// <summary>The load generator's pieces, and one short job against the real target in process.</summary>
public class BenchTests
{
    [Fact]
    public void Histogram_percentiles_are_within_three_percent_and_the_mean_is_exact()
    {
        var h = new LatencyHistogram();
        for (ulong v = 1; v <= 100_000; v++) h.Record(v * 10);   // 10 ns .. 1 ms, uniform
        Assert.Equal(100_000, h.Count);
        Assert.Equal(500_005.0, h.Mean, 3);
        Assert.Equal(10UL, h.Min);
        Assert.Equal(1_000_000UL, h.Max);
        foreach (var (q, exact) in new[] { (0.5, 500_000.0), (0.99, 990_000.0), (0.999, 999_000.0) })
        {
            double got = h.Percentile(q);
            Assert.InRange(got, exact * 0.97, exact * 1.03);
        }
    }

    [Fact]
    public void Histogram_buckets_cover_every_value_without_gaps()
    {
        int previous = -1;
        foreach (ulong v in new ulong[] { 0, 1, 63, 64, 65, 127, 128, 1000, 1UL << 40, ulong.MaxValue })
        {
            int b = LogLinearBuckets.BucketOf(v);
            Assert.InRange(b, 0, LogLinearBuckets.BucketCount - 1);
            Assert.InRange(v, LogLinearBuckets.LowestOf(b), LogLinearBuckets.HighestOf(b));
            Assert.True(b >= previous);
            previous = b;
        }
        for (int b = 1; b < LogLinearBuckets.BucketCount; b++)
            Assert.Equal(LogLinearBuckets.HighestOf(b - 1) + 1, LogLinearBuckets.LowestOf(b));
    }

    [Fact]
    public void Merged_histograms_count_everything()
    {
        var a = new LatencyHistogram();
        var b = new LatencyHistogram();
        a.Record(100);
        b.Record(300);
        b.Record(500);
        a.Add(b);
        Assert.Equal(3, a.Count);
        Assert.Equal(100UL, a.Min);
        Assert.Equal(500UL, a.Max);
        Assert.Equal(300.0, a.Mean);
    }

    [Fact]
    public void Cpu_time_is_read_from_proc_stat_even_with_odd_process_names()
    {
        // utime 250 + stime 50 ticks = 3 s; the name contains spaces and parentheses.
        string stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 100 0 0";
        Assert.Equal(3.0, ProcessCpu.Parse(stat));
        Assert.NotNull(ProcessCpu.SelfSeconds());
        Assert.Null(ProcessCpu.Parse("garbage"));
    }

    [Theory]
    [InlineData("--rw", "sideways")]
    [InlineData("--bs", "1000")]
    [InlineData("--iodepth", "0")]
    [InlineData("--rwmixread", "101")]
    [InlineData("--offset-range", "1:2:3")]
    [InlineData("--segments", "1023")]
    [InlineData("--segments", "-1")]
    public void Bad_job_options_are_refused(string option, string value)
    {
        var parse = BenchCommand.Create().Parse(["--socket", "/tmp/x.sock", option, value]);
        Assert.ThrowsAny<ArgumentException>(() => BenchCommand.Build(parse).Validate());
    }

    [Fact]
    public void Job_options_parse_like_fio()
    {
        var parse = BenchCommand.Create().Parse(["--socket", "/tmp/x.sock", "--rw", "randrw", "--rwmixread", "70", "--bs", "128k",
            "--iodepth", "8", "--queues", "2", "--size", "1G", "--offset-range", "1M:64M", "--verify"]);
        var o = BenchCommand.Build(parse);
        o.Validate();
        Assert.Equal(RwMode.RandRw, o.Rw);
        Assert.Equal(70, o.RwMixRead);
        Assert.Equal(128u * 1024, o.BlockSize);
        Assert.Equal(8, o.IoDepth);
        Assert.Equal(2, o.Queues);
        Assert.Equal(1UL << 30, o.SizeBytes);
        Assert.Equal(1UL << 20, o.RangeOffset);
        Assert.Equal(64UL << 20, o.RangeLength);
        Assert.True(o.Verify);
        Assert.Equal(TimeSpan.Zero, o.EffectiveRamp);   // a sized job counts every byte
    }

    [Fact]
    public void Segments_hugepages_and_prefill_parse_and_show_in_the_job_line()
    {
        var parse = BenchCommand.Create().Parse(["--socket", "/tmp/x.sock", "--bs", "263680", "--segments", "515", "--hugepages", "--prefill"]);
        var o = BenchCommand.Build(parse);
        o.Validate();
        Assert.Equal(515, o.Segments);
        Assert.True(o.HugePages);
        Assert.True(o.Prefill);
        Assert.Equal("rw=randread bs=263680 iodepth=1 queues=1 segments=515 runtime=10s ramp=1s hugepages prefill", o.Describe());
    }

    [Fact]
    public void A_run_whose_connection_the_target_closes_stops_with_an_error_instead_of_waiting_forever()
    {
        string socket = $"/tmp/blkt-bench-test-{Guid.NewGuid():N}.sock";
        using var reactors = new ReactorPool(null, 1, TimeSpan.FromMicroseconds(50), NullLogger.Instance);
        using var disk = new RamDisk(32 << 20);
        var device = new VirtioBlkDevice("bench-test", disk, new BlkOptions { Queues = 1 }, NullLogger.Instance);
        var server = VhostUserServer.Start(socket, device, reactors, 0, NullLogger.Instance);
        var options = new BenchOptions { Socket = socket, Rw = RwMode.RandRead, BlockSize = 4096, IoDepth = 8, Runtime = TimeSpan.FromSeconds(60) };
        Exception? failure = null;
        var run = new Thread(() =>
        {
            try { BenchRunner.Run(options); }
            catch (Exception e) { failure = e; }
        }) { IsBackground = true };
        run.Start();
        Assert.True(SpinWait.SpinUntil(() => server.HasFrontend, TimeSpan.FromSeconds(10)));
        Thread.Sleep(500);
        server.Dispose();     // what export_delete does: drain, disconnect, remove the socket
        Assert.True(run.Join(TimeSpan.FromSeconds(10)), "bench kept waiting after the target closed the connection");
        var error = Assert.IsType<BenchSetupException>(failure);
        Assert.Contains("closed the connection", error.Message);
    }

    [Theory]
    [InlineData(RwMode.RandRw, 2, 16u * 1024)]
    [InlineData(RwMode.RandRead, 1, 4096u)]
    [InlineData(RwMode.Write, 2, 128u * 1024)]
    public void A_verifying_job_against_the_real_target_moves_every_byte_and_finds_no_mismatch(RwMode rw, int queues, uint bs)
    {
        string socket = $"/tmp/blkt-bench-test-{Guid.NewGuid():N}.sock";
        using var reactors = new ReactorPool(null, 2, TimeSpan.FromMicroseconds(50), NullLogger.Instance);
        using var disk = new RamDisk(32 << 20);
        var device = new VirtioBlkDevice("bench-test", disk, new BlkOptions { Queues = 2 }, NullLogger.Instance);
        using var server = VhostUserServer.Start(socket, device, reactors, 0, NullLogger.Instance);
        var options = new BenchOptions
        {
            Socket = socket,
            Rw = rw,
            BlockSize = bs,
            IoDepth = 8,
            Queues = queues,
            SizeBytes = 8 << 20,
            Verify = true,
            TargetPid = Environment.ProcessId,
        };
        var result = BenchRunner.Run(options);
        Assert.False(result.Failed, result.FirstError);
        Assert.Equal(0, result.Errors);
        Assert.Equal(0, result.VerifyMismatches);
        Assert.Equal((long)((8 << 20) / bs), result.All.Ios);
        Assert.True(result.VerifiedBlocks > 0);
        Assert.Equal(queues, result.Queues.Count);
        Assert.True(result.All.Iops > 0);
        Assert.True(result.All.P99Ns >= result.All.P50Ns);
        Assert.Contains("\"verify_mismatches\": 0", BenchReport.Json(result));
        Assert.Contains("IOPS=", BenchReport.Text(result));
    }
}
