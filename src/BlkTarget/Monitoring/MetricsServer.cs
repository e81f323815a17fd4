using System.Net;
using System.Net.Sockets;
using System.Text;
using BlkTarget.Management;
using Microsoft.Extensions.Logging;

namespace BlkTarget.Monitoring;

/// <summary>
/// Serves GET /metrics (<see cref="PrometheusText"/>) over HTTP with the base library's HttpListener (no web
/// framework: a scrape endpoint needs one path, and the hosting packages stay the pinned ones). Every scrape reads
/// the counters then (nothing is pushed per request). Other paths answer 404. One scrape at a time, on its own thread.
/// </summary>
public sealed class MetricsServer : IDisposable
{
    private readonly HttpListener _listener;
    private readonly ReactorLoadSampler _load;
    private readonly TargetModel _model;
    private readonly ILogger _log;
    private readonly Thread _thread;

    private MetricsServer(HttpListener listener, ReactorLoadSampler load, TargetModel model, ILogger log, Uri address)
    {
        _listener = listener;
        _load = load;
        _model = model;
        _log = log;
        Address = address;
        _thread = new Thread(Serve) { IsBackground = true, Name = "metrics" };
        _thread.Start();
    }

    /// <summary>Where it listens, e.g. http://127.0.0.1:9101/ (the real port when 0 was asked for).</summary>
    public Uri Address { get; }

    /// <summary>Starts listening on <paramref name="endpoint"/> (port 0: a free port). Errors: IOException when the
    /// address is taken or cannot be listened on.</summary>
    public static MetricsServer Start(IPEndPoint endpoint, TargetModel model, ILogger log)
    {
        int port = endpoint.Port == 0 ? FreePort(endpoint.Address) : endpoint.Port;
        string host = endpoint.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{endpoint.Address}]" : endpoint.Address.ToString();
        var address = new Uri($"http://{host}:{port}/");
        var listener = new HttpListener();
        listener.Prefixes.Add(address.ToString());
        try
        {
            listener.Start();
        }
        catch (Exception e) when (e is HttpListenerException or SocketException)
        {
            listener.Close();
            throw new IOException($"metrics: cannot listen on {endpoint}: {e.Message}", e);
        }
        var load = new ReactorLoadSampler(model.Reactors.Reactors, TimeSpan.FromSeconds(1));
        log.LogInformation("metrics: Prometheus text format at {Address}metrics", address);
        return new MetricsServer(listener, load, model, log, address);
    }

    /// <summary>A port the kernel considers free now (bind to port 0, read it, let it go).</summary>
    private static int FreePort(IPAddress address)
    {
        using var probe = new TcpListener(address, 0);
        probe.Start();
        return ((IPEndPoint)probe.LocalEndpoint).Port;
    }

    private void Serve()
    {
        while (_listener.IsListening)
        {
            HttpListenerContext context;
            try
            {
                context = _listener.GetContext();
            }
            catch (Exception e) when (e is HttpListenerException or ObjectDisposedException or InvalidOperationException)
            {
                return;     // stopped
            }
            try
            {
                using var response = context.Response;
                if (context.Request.HttpMethod != "GET" || context.Request.Url?.AbsolutePath != "/metrics")
                {
                    response.StatusCode = 404;
                    continue;
                }
                var body = Encoding.UTF8.GetBytes(PrometheusText.Write(TargetStats.Collect(_model, Vhost.Stats.CounterSnapshot.Read), _load.Ratios));
                response.ContentType = PrometheusText.ContentType;
                response.ContentLength64 = body.Length;
                response.OutputStream.Write(body);
            }
            catch (Exception e) when (e is HttpListenerException or IOException or ObjectDisposedException)
            {
                _log.LogDebug("metrics: scrape from {Remote} failed: {Error}", context.Request.RemoteEndPoint, e.Message);
            }
        }
    }

    public void Dispose()
    {
        _listener.Stop();
        _listener.Close();
        _thread.Join(TimeSpan.FromSeconds(5));
        _load.Dispose();
    }
}
