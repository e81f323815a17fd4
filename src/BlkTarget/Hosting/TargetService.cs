using BlkTarget.Configuration;
using BlkTarget.Management;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace BlkTarget.Hosting;

/// <summary>
/// The target as a hosted service: <see cref="StartAsync"/> brings the reactors, disks, exports and the management
/// socket up (so the host's "started" — systemd's READY=1 — means every socket listens), <see cref="StopAsync"/>
/// drains and closes everything. A start that fails throws <see cref="ConfigurationException"/> with one line.
/// </summary>
public sealed class TargetService(TargetSettings settings, ILoggerFactory loggers, ManagementSettings management, string? configPath)
    : IHostedService
{
    private readonly ILogger _log = loggers.CreateLogger("blktarget");
    private readonly object _reloadGate = new();

    /// <summary>The running target; null before the start and after the stop.</summary>
    public TargetRuntime? Runtime { get; private set; }

    private bool _reloadPending;

    public Task StartAsync(CancellationToken cancellationToken)
    {
        var runtime = TargetRuntime.Start(settings, loggers, management);
        bool reload;
        lock (_reloadGate)
        {
            Runtime = runtime;
            reload = _reloadPending;
        }
        // A SIGHUP that came while the target was starting applies now (the file may have changed meanwhile).
        if (reload) Reload();
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken)
    {
        if (Runtime is { } runtime)
        {
            _log.LogInformation("shutting down: finishing in-flight requests");
            runtime.Dispose();
            Runtime = null;
        }
        return Task.CompletedTask;
    }

    /// <summary>
    /// SIGHUP: reads the config file again and applies what changed the way RPCs would (<see cref="ConfigReload"/>).
    /// Logs what it did; a file that does not load changes nothing. Reloads run one at a time.
    /// </summary>
    public void Reload()
    {
        lock (_reloadGate)
        {
            if (Runtime is not { } runtime)
            {
                _reloadPending = true;
                return;
            }
            _reloadPending = false;
            if (configPath is null)
            {
                _log.LogWarning("SIGHUP: the target was started without --config; nothing to reload");
                return;
            }
            TargetSettings next;
            try
            {
                next = ConfigFile.Load(configPath);
            }
            catch (ConfigurationException e)
            {
                _log.LogError("SIGHUP: {Error}; nothing changed", e.Message);
                return;
            }
            var outcome = ConfigReload.Apply(runtime.Model, next);
            foreach (var line in outcome.Applied) _log.LogInformation("SIGHUP: {Change}", line);
            foreach (var line in outcome.Refused) _log.LogWarning("SIGHUP: {Problem}", line);
            if (outcome.Applied.Count == 0 && outcome.Refused.Count == 0) _log.LogInformation("SIGHUP: {Config} unchanged", configPath);
            if (outcome.Applied.Count > 0 && runtime.Management.PersistPath is { } persist
                && Path.GetFullPath(persist) != Path.GetFullPath(configPath))
                runtime.Management.SaveConfig(null);
        }
    }
}
