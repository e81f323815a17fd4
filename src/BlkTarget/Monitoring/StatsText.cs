using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using BlkTarget.Commands;

namespace BlkTarget.Monitoring;

/// <summary>
/// `blktarget stats` without --json: for every export and disk of a `stats` result (<see cref="StatsJson"/>) a heading
/// line and a table of the ops that happened (OPS, BYTES, ERRORS by kind, latency mean and percentiles in
/// microseconds), then the reactors' busy seconds.
/// </summary>
public static class StatsText
{
    private static readonly string[] Header = ["OP", "OPS", "BYTES", "ERRORS", "MEAN_US", "P50_US", "P90_US", "P99_US", "P99.9_US", "MAX_US"];

    /// <summary>The text for <paramref name="result"/>, lines ending in '\n'.</summary>
    public static string Render(JsonNode result)
    {
        var text = new StringBuilder();
        foreach (var e in result["exports"]!.AsArray())
        {
            string disks = string.Join(",", e!["disks"]!.AsArray().Select(d => (string)d!));
            text.Append(CultureInfo.InvariantCulture, $"export {e["name"]} ({e["kind"]}, disk {disks}): {e["in_flight"]} in flight\n");
            text.Append(OpsTable(e));
        }
        foreach (var d in result["disks"]!.AsArray())
        {
            string allocated = d!["allocated_bytes"] is { } a ? $", {a} allocated" : "";
            text.Append(CultureInfo.InvariantCulture, $"disk {d["name"]} ({d["size_bytes"]} bytes{allocated}): {d["in_flight"]} in flight\n");
            text.Append(OpsTable(d));
        }
        text.Append("reactors: ").Append(string.Join(", ", result["reactors"]!.AsArray().Select(r =>
            string.Create(CultureInfo.InvariantCulture, $"{r!["id"]} busy {(double)r["busy_seconds"]!:0.000} s")))).Append('\n');
        return text.ToString();
    }

    private static string OpsTable(JsonNode o)
    {
        var rows = new List<IReadOnlyList<string>>();
        foreach (var (name, op) in o["ops"]!.AsObject())
        {
            if ((long)op!["ops"]! == 0) continue;
            var errors = op["errors"]!.AsObject().Where(kv => (long)kv.Value! > 0).Select(kv => $"{kv.Key}:{kv.Value}").ToList();
            var l = op["latency_ns"]!;
            rows.Add([name, op["ops"]!.ToString(), op["bytes"]!.ToString(), errors.Count == 0 ? "0" : string.Join(",", errors),
                Us(l["mean"]), Us(l["p50"]), Us(l["p90"]), Us(l["p99"]), Us(l["p99_9"]), Us(l["max"])]);
        }
        if (rows.Count == 0) return "  (no requests)\n";
        return string.Concat(Table.Render(Header, rows).Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(line => "  " + line + "\n"));
    }

    private static string Us(JsonNode? ns) => ((double)ns! / 1000).ToString("0.0", CultureInfo.InvariantCulture);
}
