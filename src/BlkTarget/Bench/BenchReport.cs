using System.Text;
using System.Text.Json;

namespace BlkTarget.Bench;

/// <summary>Writes a <see cref="BenchResult"/> for people (fio-like text) or machines (JSON).</summary>
public static class BenchReport
{
    public static string Text(BenchResult r)
    {
        var o = r.Options;
        var d = r.Device;
        var sb = new StringBuilder();
        sb.AppendLine($"blktarget bench: {o.Describe()}");
        sb.AppendLine($"  device: {o.Socket}, {Units.Bytes(d.CapacityBytes)}B, block size {d.LogicalBlockSize}, {d.BackendQueues} queue(s) offered, " +
                      $"{(d.Packed ? "packed " : "")}ring {d.QueueSize}{(d.Indirect ? " indirect" : "")}{(d.EventIdx ? " event-idx" : "")}, {d.SegmentsPerRequest} segment(s)/request");
        if (r.Read is { } read && o.Reads) Line(sb, "read ", read);
        if (r.Write is { } write && o.Writes) Line(sb, "write", write);
        if (o.Rw == RwMode.RandRw) Line(sb, "all  ", r.All);
        if (r.Queues.Count > 1)
            foreach (var q in r.Queues)
                sb.AppendLine($"  queue {q.Index}: IOPS={Units.Count(q.Iops)} over {Units.Fixed(q.Seconds)}s, slept {q.Sleeps} time(s)");
        else if (r.Queues.Count == 1 && r.Queues[0].Sleeps > 0)
            sb.AppendLine($"  queue 0: slept {r.Queues[0].Sleeps} time(s) waiting for completions");
        sb.Append($"  cpu over {Units.Fixed(r.CpuWindowSeconds)}s: load generator {Cpu(r.LoadGeneratorCpuSeconds, r.CpuWindowSeconds)}");
        if (o.TargetPid is int pid) sb.Append($", target pid {pid} ({ProcessCpu.Name(pid) ?? "gone"}) {Cpu(r.TargetCpuSeconds, r.CpuWindowSeconds)}");
        sb.AppendLine();
        if (o.Verify) sb.AppendLine($"  verify: {r.VerifiedBlocks} block(s) checked, {r.VerifyMismatches} mismatch(es)");
        if (r.Errors > 0 || r.VerifyMismatches > 0) sb.AppendLine($"  ERRORS: {r.Errors} failed request(s); first: {r.FirstError}");
        return sb.ToString();
    }

    private static void Line(StringBuilder sb, string name, DirectionResult x) =>
        sb.AppendLine($"  {name}: IOPS={Units.Count(x.Iops)}, BW={Units.Fixed(x.BytesPerSecond / (1 << 20), "0.0")}MiB/s, ios={x.Ios}; " +
                      $"lat mean={Units.Latency(x.MeanNs)} p50={Units.Latency(x.P50Ns)} p99={Units.Latency(x.P99Ns)} " +
                      $"p99.9={Units.Latency(x.P999Ns)} max={Units.Latency(x.MaxNs)}");

    private static string Cpu(double? seconds, double window) =>
        seconds is double s ? $"{Units.Fixed(s)}s ({Units.Fixed(window > 0 ? 100 * s / window : 0, "0")}% of a core)" : "n/a";

    public static string Json(BenchResult r)
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            var o = r.Options;
            w.WriteStartObject();
            w.WriteStartObject("job");
            w.WriteString("socket", o.Socket);
            w.WriteString("rw", BenchOptions.Name(o.Rw));
            w.WriteNumber("rwmixread", o.RwMixRead);
            w.WriteNumber("bs", o.BlockSize);
            w.WriteNumber("iodepth", o.IoDepth);
            w.WriteNumber("queues", o.Queues);
            if (o.Runtime is { } rt) w.WriteNumber("runtime_s", rt.TotalSeconds);
            if (o.SizeBytes is { } size) w.WriteNumber("size", size);
            w.WriteNumber("ramp_s", o.EffectiveRamp.TotalSeconds);
            w.WriteNumber("offset", o.RangeOffset);
            if (o.RangeLength is { } len) w.WriteNumber("range", len);
            w.WriteBoolean("verify", o.Verify);
            w.WriteNumber("idle_poll_us", o.IdlePollMicroseconds);
            w.WriteEndObject();

            var d = r.Device;
            w.WriteStartObject("device");
            w.WriteNumber("capacity", d.CapacityBytes);
            w.WriteNumber("block_size", d.LogicalBlockSize);
            w.WriteNumber("backend_queues", d.BackendQueues);
            w.WriteNumber("queue_size", d.QueueSize);
            w.WriteBoolean("event_idx", d.EventIdx);
            w.WriteBoolean("indirect", d.Indirect);
            w.WriteBoolean("packed", d.Packed);
            w.WriteNumber("segments_per_request", d.SegmentsPerRequest);
            w.WriteEndObject();

            if (r.Read is { } read) Direction(w, "read", read);
            if (r.Write is { } write) Direction(w, "write", write);
            Direction(w, "all", r.All);

            w.WriteStartArray("queues");
            foreach (var q in r.Queues)
            {
                w.WriteStartObject();
                w.WriteNumber("index", q.Index);
                w.WriteNumber("read_ios", q.ReadIos);
                w.WriteNumber("write_ios", q.WriteIos);
                w.WriteNumber("seconds", q.Seconds);
                w.WriteNumber("iops", q.Iops);
                w.WriteNumber("sleeps", q.Sleeps);
                w.WriteEndObject();
            }
            w.WriteEndArray();

            w.WriteStartObject("cpu");
            w.WriteNumber("window_s", r.CpuWindowSeconds);
            Nullable(w, "load_generator_s", r.LoadGeneratorCpuSeconds);
            if (o.TargetPid is int pid)
            {
                w.WriteNumber("target_pid", pid);
                Nullable(w, "target_s", r.TargetCpuSeconds);
            }
            w.WriteEndObject();

            w.WriteNumber("errors", r.Errors);
            w.WriteNumber("verified_blocks", r.VerifiedBlocks);
            w.WriteNumber("verify_mismatches", r.VerifyMismatches);
            if (r.FirstError is { } e) w.WriteString("first_error", e);
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(stream.ToArray());
    }

    private static void Direction(Utf8JsonWriter w, string name, DirectionResult x)
    {
        w.WriteStartObject(name);
        w.WriteNumber("ios", x.Ios);
        w.WriteNumber("iops", Math.Round(x.Iops, 1));
        w.WriteNumber("bw_bytes", Math.Round(x.BytesPerSecond));
        w.WriteStartObject("lat_ns");
        w.WriteNumber("mean", Math.Round(x.MeanNs, 1));
        w.WriteNumber("min", x.MinNs);
        w.WriteNumber("p50", x.P50Ns);
        w.WriteNumber("p90", x.P90Ns);
        w.WriteNumber("p99", x.P99Ns);
        w.WriteNumber("p99.9", x.P999Ns);
        w.WriteNumber("max", x.MaxNs);
        w.WriteEndObject();
        w.WriteEndObject();
    }

    private static void Nullable(Utf8JsonWriter w, string name, double? value)
    {
        if (value is double v) w.WriteNumber(name, Math.Round(v, 3));
        else w.WriteNull(name);
    }
}
