using BlkTarget.Bench;
using BlkTarget.Hosting;
using BlkTarget.Vhost.Reactor;
using Xunit.Abstractions;

namespace BlkTarget.IntegrationTests;

/// <summary>The start-up warm-up really runs I/O through the data path, cleans up after itself and leaves the
/// reactor serving real exports.</summary>
public sealed class DataPathWarmUpTests(ITestOutputHelper output)
{
    [Fact]
    public void The_warm_up_runs_requests_leaves_nothing_behind_and_the_reactor_serves_afterwards()
    {
        var log = new TestLogger(output);
        var before = WarmUpDirectories();
        using (var reactors = new ReactorPool(null, 1, TimeSpan.FromMicroseconds(50), log))
        {
            DataPathWarmUp.Run(reactors, TimeSpan.FromMilliseconds(200), log);
            var line = Assert.Single(log.Lines, l => l.Contains("data path warm", StringComparison.Ordinal));
            var match = System.Text.RegularExpressions.Regex.Match(line, @"\[Information\] data path warmed up: (\d+) requests in 200 ms");
            Assert.True(match.Success, line);
            Assert.True(long.Parse(match.Groups[1].Value) > 1000, line);
            Assert.Equal(before, WarmUpDirectories());

            // The same reactor then serves an export as usual.
            using (var export = new RamBlkExport(reactors, log))
            {
                var result = BenchRunner.Run(new BenchOptions
                {
                    Socket = export.Socket, Rw = RwMode.RandRw, Runtime = TimeSpan.FromMilliseconds(200), Ramp = TimeSpan.Zero,
                    RangeLength = 1 << 20, Verify = true,
                });
                Assert.False(result.Failed, result.FirstError);
                Assert.True(result.All.Ios > 0);
            }
        }
    }

    [Fact]
    public void A_zero_duration_does_nothing()
    {
        var log = new TestLogger(output);
        using var reactors = new ReactorPool(null, 1, TimeSpan.FromMicroseconds(50), log);
        DataPathWarmUp.Run(reactors, TimeSpan.Zero, log);
        Assert.DoesNotContain(log.Lines, l => l.Contains("warm-up", StringComparison.Ordinal));
    }

    private static string[] WarmUpDirectories() =>
        Directory.GetDirectories(Path.GetTempPath(), "blktarget-warm-up-*").Order().ToArray();
}
