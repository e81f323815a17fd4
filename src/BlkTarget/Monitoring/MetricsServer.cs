using System.Net;
using BlkTarget.Management;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace BlkTarget.Monitoring;

/// <summary>
/// Serves GET /metrics (<see cref="PrometheusText"/>) over HTTP with Kestrel from the shared framework. Every scrape
/// reads the counters then (nothing is pushed per request). Other paths answer 404.
/// </summary>
public sealed class MetricsServer : IDisposable
{
    private readonly WebApplication _app;
    private readonly ReactorLoadSampler _load;

    private MetricsServer(WebApplication app, ReactorLoadSampler load, Uri address)
    {
        _app = app;
        _load = load;
        Address = address;
    }

    /// <summary>Where it listens, e.g. http://127.0.0.1:9101/ (the real port when 0 was asked for).</summary>
    public Uri Address { get; }

    /// <summary>Starts listening on <paramref name="endpoint"/>. Errors: IOException when the address is taken or not local.</summary>
    public static MetricsServer Start(IPEndPoint endpoint, TargetModel model, ILogger log)
    {
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = [] });
        builder.Logging.ClearProviders();
        builder.WebHost.UseKestrel(o => o.Listen(endpoint));
        var app = builder.Build();
        var load = new ReactorLoadSampler(model.Reactors.Reactors, TimeSpan.FromSeconds(1));
        app.MapGet("/metrics", () => Results.Text(PrometheusText.Write(TargetStats.Collect(model, Vhost.Stats.CounterSnapshot.Read), load.Ratios),
            PrometheusText.ContentType));
        try
        {
            app.StartAsync().GetAwaiter().GetResult();
        }
        catch (Exception e) when (e is IOException or System.Net.Sockets.SocketException)
        {
            load.Dispose();
            ((IDisposable)app).Dispose();
            throw new IOException($"metrics: cannot listen on {endpoint}: {e.Message}", e);
        }
        string bound = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        log.LogInformation("metrics: Prometheus text format at {Address}metrics", bound.EndsWith('/') ? bound : bound + "/");
        return new MetricsServer(app, load, new Uri(bound.EndsWith('/') ? bound : bound + "/"));
    }

    public void Dispose()
    {
        _load.Dispose();
        _app.StopAsync().GetAwaiter().GetResult();
        ((IDisposable)_app).Dispose();
    }
}
