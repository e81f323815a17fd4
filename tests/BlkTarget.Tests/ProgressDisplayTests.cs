using BlkTarget.Commands;

namespace BlkTarget.Tests;

/// <summary>The progress line of long image operations: percent, rate, ETA; nothing at all when disabled.</summary>
public sealed class ProgressDisplayTests
{
    [Fact]
    public void The_line_shows_percent_rate_and_eta()
    {
        var now = TimeSpan.Zero;
        var output = new StringWriter();
        var display = new ProgressDisplay("convert", output, enabled: true, () => now);
        display.Report(0, 1000UL << 20);
        now = TimeSpan.FromSeconds(2);
        display.Report(200UL << 20, 1000UL << 20);    // 100 MiB/s, 800 MiB to go
        string line = output.ToString().Split('\r', StringSplitOptions.RemoveEmptyEntries)[^1];
        Assert.Contains("convert  20.0%", line);
        Assert.Contains("200.0 MiB / 1000.0 MiB", line);
        Assert.Contains("100.0 MiB/s", line);
        Assert.Contains("ETA 0:08", line);
        display.Dispose();
        Assert.EndsWith("\r", output.ToString());      // the line is erased at the end
    }

    [Fact]
    public void Updates_are_throttled_but_the_last_one_always_shows()
    {
        var now = TimeSpan.Zero;
        var output = new StringWriter();
        var display = new ProgressDisplay("export", output, enabled: true, () => now);
        for (ulong i = 0; i <= 100; i++) display.Report(i, 100);
        Assert.Equal(2, output.ToString().Count(c => c == '\r'));   // the first and the final report
        Assert.Contains("100.0%", output.ToString());
    }

    [Fact]
    public void A_disabled_display_writes_nothing()
    {
        var output = new StringWriter();
        using (var display = new ProgressDisplay("import", output, enabled: false))
            for (ulong i = 0; i <= 10; i++) display.Report(i, 10);
        Assert.Equal("", output.ToString());
    }

    [Theory]
    [InlineData(59, "0:59")]
    [InlineData(61, "1:01")]
    [InlineData(3725, "1:02:05")]
    public void Durations_read_like_a_clock(int seconds, string expected) =>
        Assert.Equal(expected, ProgressDisplay.Duration(TimeSpan.FromSeconds(seconds)));
}
