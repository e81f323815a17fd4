using System.Globalization;
using BlkTarget.Vhost.Stats;
using Spectre.Console;
using Spectre.Console.Rendering;

namespace BlkTarget.Monitoring.Top;

/// <summary>One row of the `top` view: an export's rates over the interval between two samples.</summary>
public sealed record TopRow(string Export, double Iops, double ReadMiBs, double WriteMiBs, double MeanUs, double P99Us, long InFlight, int Queues);

/// <summary>
/// The `blktarget top` view as a pure function of two samples: per export IOPS, read and write MiB/s, mean and p99
/// latency (µs) of the requests completed in between, requests in flight now and its queues; sorted by IOPS
/// (then name); then every reactor's busy share of the interval. No colours, ASCII borders: it reads the same over
/// SSH, in a pipe and in a test.
/// </summary>
public static class TopFrame
{
    /// <summary>The rows, busiest first. An export missing from <paramref name="before"/> counts from zero.</summary>
    public static IReadOnlyList<TopRow> Rows(TopSample before, TopSample after)
    {
        double seconds = Math.Max(after.TimeSeconds - before.TimeSeconds, 1e-9);
        var rows = new List<TopRow>();
        foreach (var e in after.Exports)
        {
            var b = before.Exports.FirstOrDefault(x => x.Name == e.Name);
            long ops = e.Ops - (b?.Ops ?? 0);
            long latency = e.LatencySumNs - (b?.LatencySumNs ?? 0);
            var buckets = new long[e.Buckets.Length];
            for (int i = 0; i < buckets.Length; i++) buckets[i] = e.Buckets[i] - (b?.Buckets[i] ?? 0);
            rows.Add(new TopRow(e.Name, ops / seconds, (e.ReadBytes - (b?.ReadBytes ?? 0)) / seconds / (1 << 20),
                (e.WriteBytes - (b?.WriteBytes ?? 0)) / seconds / (1 << 20), ops > 0 ? latency / 1000.0 / ops : 0,
                LogLinearBuckets.Percentile(buckets, 0.99) / 1000.0, e.InFlight, e.Queues));
        }
        return rows.OrderByDescending(r => r.Iops).ThenBy(r => r.Export, StringComparer.Ordinal).ToList();
    }

    /// <summary>The view as a Spectre renderable.</summary>
    public static IRenderable Build(TopSample before, TopSample after)
    {
        double seconds = Math.Max(after.TimeSeconds - before.TimeSeconds, 1e-9);
        var table = new Table().Border(TableBorder.Ascii2);
        table.AddColumn("EXPORT");
        foreach (var heading in new[] { "IOPS", "READ MiB/s", "WRITE MiB/s", "MEAN us", "P99 us", "IN FLIGHT", "QUEUES" })
            table.AddColumn(new TableColumn(heading).RightAligned());
        foreach (var r in Rows(before, after))
            table.AddRow(Markup.Escape(r.Export), F(r.Iops, "0"), F(r.ReadMiBs, "0.0"), F(r.WriteMiBs, "0.0"), F(r.MeanUs, "0.0"), F(r.P99Us, "0.0"),
                r.InFlight.ToString(CultureInfo.InvariantCulture), r.Queues.ToString(CultureInfo.InvariantCulture));
        var reactors = string.Join("   ", after.Reactors.Select(r =>
        {
            double busy = (r.BusySeconds - (before.Reactors.FirstOrDefault(x => x.Id == r.Id)?.BusySeconds ?? 0)) / seconds;
            return $"reactor {r.Id}: {F(Math.Clamp(busy, 0, 1) * 100, "0")}% busy, {r.Queues} queue(s)";
        }));
        return new Rows(
            new Text($"blktarget top - {after.Exports.Count} export(s), interval {F(seconds, "0.0")} s - q or Ctrl+C quits"),
            table,
            new Text(reactors.Length > 0 ? reactors : "no reactors"));
    }

    /// <summary>The view as plain text <paramref name="width"/> columns wide (lines end in '\n').</summary>
    public static string Render(TopSample before, TopSample after, int width)
    {
        var writer = new StringWriter { NewLine = "\n" };
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Ansi = AnsiSupport.No,
            ColorSystem = ColorSystemSupport.NoColors,
            Interactive = InteractionSupport.No,
            Out = new AnsiConsoleOutput(writer),
        });
        console.Profile.Width = width;
        console.Profile.Capabilities.Unicode = false;
        console.Write(Build(before, after));
        return writer.ToString().Replace("\r\n", "\n");
    }

    private static string F(double value, string format) => value.ToString(format, CultureInfo.InvariantCulture);
}
