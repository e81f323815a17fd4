using BlkTarget.Configuration;
using BlkTarget.Management;
using BlkTarget.Monitoring;
using BlkTarget.Vhost.Protocol;
using BlkTarget.Vhost.Reactor;
using Microsoft.Extensions.Logging;

namespace BlkTarget.Hosting;

/// <summary>How `serve` exposes management: the RPC socket and where changes are persisted.</summary>
public sealed record ManagementSettings
{
    /// <summary>The JSON-RPC socket path; null: no RPC socket.</summary>
    public string? RpcSocket { get; init; }
    /// <summary>The path is the default one (not given): if another target listens there, serve without RPC
    /// (logged) instead of failing.</summary>
    public bool RpcSocketIsDefault { get; init; }
    /// <summary>The config file every successful change is written to; null: changes are not persisted.</summary>
    public string? PersistPath { get; init; }
    /// <summary>Write <see cref="PersistPath"/> once at start too (--config-out: the file describes the target from
    /// the start, not only after the first change).</summary>
    public bool SaveAtStart { get; init; }
    /// <summary>Where to serve Prometheus metrics (--metrics-listen); null: nowhere.</summary>
    public System.Net.IPEndPoint? MetricsListen { get; init; }
}

/// <summary>
/// The running target: reactors, the model (disks and exports) built from the settings, and the management
/// socket. Start either brings everything up or releases what it had started and throws one clear error.
/// </summary>
public sealed class TargetRuntime : IDisposable
{
    private readonly ReactorPool _reactors;
    private readonly TargetModel _model;
    private JsonRpcServer? _rpc;
    private MetricsServer? _metrics;

    private TargetRuntime(ReactorPool reactors, TargetModel model, ManagementService management)
    {
        _reactors = reactors;
        _model = model;
        Management = management;
    }

    public TargetModel Model => _model;
    public ManagementService Management { get; }
    public ReactorPool Reactors => _reactors;
    /// <summary>The RPC socket being served, or null.</summary>
    public string? RpcSocket => _rpc?.SocketPath;
    /// <summary>The metrics endpoint's base address (GET {address}metrics), or null.</summary>
    public Uri? MetricsAddress => _metrics?.Address;

    public static TargetRuntime Start(TargetSettings settings, ILoggerFactory loggers, ManagementSettings? management = null)
    {
        management ??= new ManagementSettings();
        var log = loggers.CreateLogger("blktarget");
        var plan = ModelPlan.From(settings);
        int maxQueues = plan.Exports.Select(e => e.Queues).DefaultIfEmpty(1).Max();
        var reactors = new ReactorPool(settings.Cpus, DefaultReactorCount(maxQueues, Environment.ProcessorCount), settings.IdlePoll,
            loggers.CreateLogger("reactor"));
        var model = new TargetModel(reactors, new VhostUserSessionOptions { DrainTimeout = settings.DrainTimeout }, loggers)
        {
            SocketAccess = settings.SocketAccess,
        };
        var runtime = new TargetRuntime(reactors, model, new ManagementService(model, new ConfigStore(settings), management.PersistPath));
        try
        {
            DataPathWarmUp.Run(reactors, settings.DataPathWarmUp, log);
            foreach (var disk in plan.Disks) model.CreateDisk(disk);
            foreach (var export in plan.Exports) model.CreateExport(export);
            if (management.SaveAtStart) runtime.Management.SaveConfig(null);
            if (management.MetricsListen is { } metrics) runtime._metrics = MetricsServer.Start(metrics, model, loggers.CreateLogger("metrics"));
            if (management.RpcSocket is { } rpcSocket)
            {
                try
                {
                    runtime._rpc = JsonRpcServer.Start(rpcSocket, new ManagementMethods(runtime.Management), loggers.CreateLogger("rpc"));
                }
                catch (IOException e) when (management.RpcSocketIsDefault)
                {
                    log.LogWarning("{Error}; serving without management (give --rpc-socket PATH)", e.Message);
                }
            }
        }
        catch (ManagementException e)
        {
            runtime.Dispose();
            throw new ConfigurationException(e.Message);
        }
        catch (IOException e)
        {
            runtime.Dispose();
            throw new ConfigurationException(e.Message);
        }
        catch
        {
            runtime.Dispose();
            throw;
        }
        log.LogInformation("reactors: {Count} ({Placement})", reactors.Reactors.Count,
            settings.Cpus.Count > 0 ? "pinned to CPUs " + string.Join(",", settings.Cpus) : "unpinned");
        if (management.PersistPath is { } persist) log.LogInformation("changes are saved to {Config}", persist);
        return runtime;
    }

    /// <summary>
    /// Unpinned reactors when no --cpus is given: one per queue, but at most half the CPUs, because the VMs'
    /// vCPUs and QEMU need the rest; on a 2-CPU host one polling reactor beats two that preempt each other
    /// (bench/README.md has the measurements).
    /// </summary>
    public static int DefaultReactorCount(int maxQueues, int processorCount) => Math.Max(1, Math.Min(maxQueues, processorCount / 2));

    /// <summary>Closes the management socket, stops every export (sessions drain their in-flight requests, sockets
    /// are removed), then stops the reactors and closes the disks.</summary>
    public void Dispose()
    {
        _rpc?.Dispose();
        _metrics?.Dispose();
        _model.StopExports();
        _reactors.Dispose();
        _model.Dispose();
    }
}
