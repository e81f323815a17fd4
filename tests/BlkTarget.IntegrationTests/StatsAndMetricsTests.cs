using System.Diagnostics;
using System.Net;
using System.Text.Json.Nodes;
using BlkTarget.Hosting;
using BlkTarget.Vhost.Frontend;
using static BlkTarget.IntegrationTests.TestData;

namespace BlkTarget.IntegrationTests;

/// <summary>Request statistics as operators see them: the `stats` RPC over the real socket, the Prometheus endpoint
/// over HTTP and `blktarget top --once`, all after a frontend made a known set of requests.</summary>
public sealed class StatsAndMetricsTests : IDisposable
{
    private readonly RpcTargetHarness _harness = new("blkt-stats-");
    private string _dir => _harness.Directory;

    private TargetRuntime Start() => _harness.Start(management: m => m with { MetricsListen = new IPEndPoint(IPAddress.Loopback, 0) });

    private JsonNode Call(string method, JsonObject? parameters = null) => _harness.Call(method, parameters)!;

    /// <summary>Creates disk d1 (RAM) and blk export vm1 with two queues, connects, and makes on queue 0: 7 reads of
    /// 4 KiB, 5 writes of 8 KiB, 3 flushes, and 2 reads past the end; on queue 1: 4 writes of 512 bytes.</summary>
    private TestGuest Workload()
    {
        Call("disk_create", new JsonObject { ["name"] = "d1", ["backend"] = "ram:16M" });
        Call("export_create_blk", new JsonObject { ["name"] = "vm1", ["socket"] = Path.Combine(_dir, "vm1.sock"), ["disk"] = "d1", ["queues"] = 2 });
        var guest = TestGuest.Connect(Path.Combine(_dir, "vm1.sock"), queues: 2);
        var small = guest.Allocate(512);
        var page = guest.Allocate(4096);
        var two = guest.Allocate(8192);
        for (int i = 0; i < 7; i++) Assert.Equal(Ok, guest.Blk[0].Execute(BlkRequestType.In, (ulong)i * 8, [page]).Status);
        for (int i = 0; i < 5; i++) Assert.Equal(Ok, guest.Blk[0].Execute(BlkRequestType.Out, (ulong)i * 16, [two]).Status);
        for (int i = 0; i < 3; i++) Assert.Equal(Ok, guest.Blk[0].Execute(BlkRequestType.Flush, 0, []).Status);
        for (int i = 0; i < 2; i++) Assert.Equal(IoErr, guest.Blk[0].Execute(BlkRequestType.In, (16 << 20) / 512, [page]).Status);
        for (int i = 0; i < 4; i++) Assert.Equal(Ok, guest.Blk[1].Execute(BlkRequestType.Out, (ulong)i, [small]).Status);
        return guest;
    }

    private static long Ops(JsonNode o, string op, string field = "ops") => (long)o["ops"]![op]![field]!;

    [Fact]
    public void Stats_count_exactly_the_requests_the_frontend_made_per_op_queue_and_disk()
    {
        using var runtime = Start();
        using var guest = Workload();

        var export = Call("stats", new JsonObject { ["export"] = "vm1" })["exports"]!.AsArray().Single()!;
        Assert.Equal(9, Ops(export, "read"));
        Assert.Equal(7 * 4096, Ops(export, "read", "bytes"));
        Assert.Equal(2, (long)export["ops"]!["read"]!["errors"]!["out_of_range"]!);
        Assert.Equal(9, Ops(export, "write"));
        Assert.Equal(5 * 8192 + 4 * 512, Ops(export, "write", "bytes"));
        Assert.Equal(3, Ops(export, "flush"));
        Assert.Equal(0, Ops(export, "discard") + Ops(export, "write_zeroes") + Ops(export, "other"));
        Assert.Equal(0, (long)export["in_flight"]!);
        var queues = export["queues"]!.AsArray();
        Assert.Equal([0, 1], queues.Select(q => (int)q!["index"]!));
        Assert.Equal(5, Ops(queues[0]!, "write"));
        Assert.Equal(4, Ops(queues[1]!, "write"));
        var latency = export["ops"]!["read"]!["latency_ns"]!;
        Assert.True((long)latency["p50"]! > 0 && (long)latency["p50"]! <= (long)latency["p99"]! && (long)latency["p99"]! <= (long)latency["max"]!);

        var disk = Call("stats", new JsonObject { ["disk"] = "d1" })["disks"]!.AsArray().Single()!;
        Assert.Equal(9, Ops(disk, "read"));
        Assert.Equal(5 * 8192 + 4 * 512, Ops(disk, "write", "bytes"));

        // A reset returns the counts so far; the next call counts from zero.
        Assert.Equal(3, Ops(Call("stats", new JsonObject { ["reset"] = true })["exports"]![0]!, "flush"));
        Assert.Equal(Ok, guest.Blk[1].Execute(BlkRequestType.Flush, 0, []).Status);
        var after = Call("stats")["exports"]![0]!;
        Assert.Equal(1, Ops(after, "flush"));
        Assert.Equal(0, Ops(after, "read") + Ops(after, "write"));
    }

    [Fact]
    public async Task The_metrics_endpoint_shows_the_same_numbers_in_the_prometheus_text_format()
    {
        using var runtime = Start();
        using var guest = Workload();
        using var http = new HttpClient { BaseAddress = runtime.MetricsAddress };

        using var response = await http.GetAsync("metrics");
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("text/plain; version=0.0.4; charset=utf-8", response.Content.Headers.ContentType!.ToString());
        var lines = (await response.Content.ReadAsStringAsync()).Split('\n');

        string[] expected =
        [
            "blktarget_requests_total{export=\"vm1\",queue=\"0\",op=\"read\"} 9",
            "blktarget_requests_total{export=\"vm1\",queue=\"0\",op=\"write\"} 5",
            "blktarget_requests_total{export=\"vm1\",queue=\"1\",op=\"write\"} 4",
            "blktarget_requests_total{export=\"vm1\",queue=\"0\",op=\"flush\"} 3",
            "blktarget_bytes_total{export=\"vm1\",queue=\"0\",op=\"read\"} 28672",
            "blktarget_bytes_total{export=\"vm1\",queue=\"0\",op=\"write\"} 40960",
            "blktarget_bytes_total{export=\"vm1\",queue=\"1\",op=\"write\"} 2048",
            "blktarget_request_errors_total{export=\"vm1\",op=\"read\",kind=\"out_of_range\"} 2",
            "blktarget_request_duration_seconds_bucket{export=\"vm1\",op=\"write\",le=\"+Inf\"} 9",
            "blktarget_request_duration_seconds_count{export=\"vm1\",op=\"flush\"} 3",
            "blktarget_inflight{export=\"vm1\"} 0",
            "blktarget_disk_size_bytes{disk=\"d1\"} 16777216",
        ];
        foreach (var line in expected) Assert.Contains(line, lines);
        Assert.Contains(lines, l => l.StartsWith("blktarget_reactor_busy_ratio{reactor=\"0\"} ", StringComparison.Ordinal));
        Assert.Contains("# TYPE blktarget_request_duration_seconds histogram", lines);
        Assert.Equal(HttpStatusCode.NotFound, (await http.GetAsync("other")).StatusCode);
    }

    [Fact]
    public void A_metrics_address_in_use_fails_the_start_in_one_line()
    {
        using var taken = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        var endpoint = (IPEndPoint)taken.LocalEndpoint;

        var e = Assert.Throws<BlkTarget.Configuration.ConfigurationException>(() => _harness.Start(management: m => m with { MetricsListen = endpoint }));
        Assert.StartsWith($"metrics: cannot listen on {endpoint}: ", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public async Task Metrics_on_every_address_are_reachable_on_loopback()
    {
        // 0.0.0.0 (what an operator writes for "all interfaces") must work: HttpListener itself refuses it as a host.
        var runtime = _harness.Start(management: m => m with { MetricsListen = BlkTarget.Monitoring.ListenAddress.Parse("0.0.0.0:0") });
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{runtime.MetricsAddress!.Port}/") };
        var body = await http.GetStringAsync("metrics");
        Assert.Contains("# TYPE blktarget_requests_total counter", body);
        runtime.Dispose();
    }

    [Fact]
    public void Localhost_is_the_one_host_name_metrics_listen_takes()
    {
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, 9101), BlkTarget.Monitoring.ListenAddress.Parse("localhost:9101"));
        Assert.Throws<BlkTarget.Configuration.ConfigurationException>(() => BlkTarget.Monitoring.ListenAddress.Parse("metrics.example:9101"));
        Assert.Throws<BlkTarget.Configuration.ConfigurationException>(() => BlkTarget.Monitoring.ListenAddress.Parse("9101"));
    }

    [Fact]
    public async Task A_stopped_target_no_longer_serves_metrics()
    {
        var runtime = Start();
        var address = runtime.MetricsAddress!;
        using var http = new HttpClient { BaseAddress = address };
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("metrics")).StatusCode);

        runtime.Dispose();
        await Assert.ThrowsAsync<HttpRequestException>(() => http.GetAsync("metrics"));
        // The port is free again.
        using var again = new System.Net.Sockets.TcpListener(IPAddress.Loopback, address.Port);
        again.Start();
    }

    [Fact]
    public async Task Top_once_prints_the_export_of_a_running_target()
    {
        using var runtime = Start();
        using var guest = Workload();
        var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var arg in new[] { Path.Combine(AppContext.BaseDirectory, "blktarget.dll"), "top", "--once", "--interval", "0.2", "--rpc-socket", _harness.Rpc })
            info.ArgumentList.Add(arg);
        using var top = Process.Start(info)!;
        var stdout = top.StandardOutput.ReadToEndAsync();
        var stderr = top.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await top.WaitForExitAsync(timeout.Token);
        Assert.True(top.ExitCode == 0, await stderr);
        var lines = (await stdout).Split('\n');
        Assert.StartsWith("blktarget top - 1 export(s), interval ", lines[0]);
        Assert.Contains(lines, l => l.StartsWith("| vm1 ", StringComparison.Ordinal) && l.TrimEnd().EndsWith("|         0 |      2 |", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.StartsWith("reactor 0: ", StringComparison.Ordinal));
    }

    public void Dispose() => _harness.Delete();
}
