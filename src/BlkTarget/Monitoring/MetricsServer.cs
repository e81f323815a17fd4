using System.Net;
using System.Net.Sockets;
using BlkTarget.Management;
using BlkTarget.Vhost.Stats;
using Microsoft.Extensions.Logging;
using Prometheus;

namespace BlkTarget.Monitoring;

/// <summary>
/// Serves GET /metrics with prometheus-net's <see cref="MetricServer"/> (HttpListener based, no web framework) from a
/// registry of this target's own (<see cref="TargetMetrics"/>). Every scrape reads the counters then, in the
/// registry's before-collect callback (nothing is pushed per request). Other paths answer 404.
/// </summary>
public sealed class MetricsServer : IDisposable
{
    private readonly MetricServer _server;
    private readonly ReactorLoadSampler _load;

    private MetricsServer(MetricServer server, ReactorLoadSampler load, Uri address)
    {
        _server = server;
        _load = load;
        Address = address;
    }

    /// <summary>Where it listens, e.g. http://127.0.0.1:9101/ (the real port when 0 was asked for).</summary>
    public Uri Address { get; }

    /// <summary>Starts listening on <paramref name="endpoint"/> (port 0: a free port). Errors: IOException when the
    /// address is taken or cannot be listened on.</summary>
    public static MetricsServer Start(IPEndPoint endpoint, TargetModel model, ILogger log)
    {
        // MetricServer takes a host name and port for an HttpListener prefix, which cannot say "any port": pick one.
        int port = endpoint.Port == 0 ? FreePort(endpoint.Address) : endpoint.Port;
        string host = endpoint.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{endpoint.Address}]" : endpoint.Address.ToString();
        var address = new Uri($"http://{host}:{port}/");
        // HttpListener takes "+" for every address; it refuses 0.0.0.0 / [::] as a host ("not supported").
        if (endpoint.Address.Equals(IPAddress.Any) || endpoint.Address.Equals(IPAddress.IPv6Any)) host = "+";

        var registry = Metrics.NewCustomRegistry();
        var metrics = new TargetMetrics(registry);
        var load = new ReactorLoadSampler(model.Reactors.Reactors, TimeSpan.FromSeconds(1));
        registry.AddBeforeCollectCallback(() => metrics.Update(TargetStats.Collect(model, CounterSnapshot.Read), load.Ratios));
        var server = new MetricServer(host, port, "metrics/", registry);
        try
        {
            server.Start();
        }
        catch (Exception e) when (e is HttpListenerException or SocketException)
        {
            server.Dispose();
            load.Dispose();
            throw new IOException($"metrics: cannot listen on {endpoint}: {e.Message}", e);
        }
        log.LogInformation("metrics: Prometheus text format at {Address}metrics", address);
        return new MetricsServer(server, load, address);
    }

    /// <summary>A port the kernel considers free now (bind to port 0, read it, let it go).</summary>
    private static int FreePort(IPAddress address)
    {
        using var probe = new TcpListener(address, 0);
        probe.Start();
        return ((IPEndPoint)probe.LocalEndpoint).Port;
    }

    public void Dispose()
    {
        _server.Dispose();
        _load.Dispose();
    }
}
