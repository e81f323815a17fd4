using BlkTarget.Bench;
using BlkTarget.Vhost.Reactor;
using Xunit.Abstractions;

namespace BlkTarget.IntegrationTests;

/// <summary>The reactor's busy-time statistic (what `top` and the Prometheus busy ratio show) under real load.</summary>
public sealed class ReactorBusyTimeTests(ITestOutputHelper output)
{
    [Fact]
    public void A_reactor_busy_for_a_long_stretch_reports_its_busy_time_while_busy()
    {
        // The reactor reads the clock only now and then while busy; the busy-time statistic (top, Prometheus) must
        // still move during a long busy stretch, not only when it ends.
        var log = new TestLogger(output);
        using var reactors = new ReactorPool(null, 1, TimeSpan.FromMicroseconds(200), log);
        using var export = new RamBlkExport(reactors, log);
        var reactor = reactors.Reactors[0];
        BenchResult? result = null;
        var load = new Thread(() => result = BenchRunner.Run(new BenchOptions
        {
            Socket = export.Socket, Rw = RwMode.RandRead, IoDepth = 32, Runtime = TimeSpan.FromSeconds(2), Ramp = TimeSpan.Zero, RangeLength = 4 << 20,
        })) { IsBackground = true };
        var clock = System.Diagnostics.Stopwatch.StartNew();
        load.Start();
        Thread.Sleep(1500);
        double busyMidway = reactor.BusySeconds;
        Assert.True(load.Join(TimeSpan.FromSeconds(30)));
        Assert.False(result!.Failed, result.FirstError);
        output.WriteLine($"busy after 1.5 s of load: {busyMidway:F2} s; after the run: {reactor.BusySeconds:F2} s of {clock.Elapsed.TotalSeconds:F2} s");
        Assert.True(busyMidway > 0.5, $"busy time after 1.5 s of QD32 load: {busyMidway:F2} s");
        Assert.True(reactor.BusySeconds <= clock.Elapsed.TotalSeconds + 0.05);
    }
}
