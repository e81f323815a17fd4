using BlkTarget.Vhost.Reactor;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Hosting.Systemd;
using Microsoft.Extensions.Logging;

namespace BlkTarget.Hosting;

/// <summary>
/// Running under systemd with <c>Type=notify</c> (contrib/systemd/blktarget.service): when the service manager gave
/// us a notify socket (NOTIFY_SOCKET), the host's lifetime is systemd's (READY=1 once every hosted service started,
/// i.e. once every socket listens; STOPPING=1 when SIGTERM arrives; SIGTERM stops the host), and with
/// <c>WatchdogSec=</c> a keep-alive is sent while every reactor is healthy. Microsoft.Extensions.Hosting.Systemd's
/// own detection (parent process is systemd) is not used: the notify socket is what the protocol needs, and a test
/// can provide one.
/// </summary>
public static class SystemdIntegration
{
    /// <summary>True when a service manager listens for sd_notify messages.</summary>
    public static bool HasNotifySocket => !string.IsNullOrEmpty(Environment.GetEnvironmentVariable("NOTIFY_SOCKET"));

    /// <summary>True when stdout goes to the journal (systemd sets JOURNAL_STREAM): log lines then carry syslog
    /// priorities (&lt;N&gt;) instead of timestamps.</summary>
    public static bool LogsToJournal => !string.IsNullOrEmpty(Environment.GetEnvironmentVariable("JOURNAL_STREAM"));

    public static void Add(IServiceCollection services)
    {
        if (!HasNotifySocket) return;
        services.AddSingleton<ISystemdNotifier, SystemdNotifier>();
        services.AddSingleton<IHostLifetime, SystemdLifetime>();
        if (WatchdogService.Interval() is not null) services.AddHostedService<WatchdogService>();
    }
}

/// <summary>
/// sd_notify WATCHDOG=1 every half of WATCHDOG_USEC while every reactor is healthy: asleep in epoll, or looping
/// (its heartbeat advanced since the last check). A reactor stuck inside a queue stops the keep-alives, and systemd
/// restarts the service (with <c>Restart=on-failure</c>); guests with <c>reconnect=1</c> wait and resume.
/// </summary>
internal sealed class WatchdogService(ISystemdNotifier notifier, TargetService target, IHostApplicationLifetime lifetime, ILoggerFactory loggers)
    : BackgroundService
{
    private readonly ILogger _log = loggers.CreateLogger("watchdog");

    /// <summary>Half the watchdog timeout systemd set (WATCHDOG_USEC, for this process per WATCHDOG_PID), or null.</summary>
    public static TimeSpan? Interval()
    {
        if (!ulong.TryParse(Environment.GetEnvironmentVariable("WATCHDOG_USEC"), out ulong usec) || usec == 0) return null;
        if (int.TryParse(Environment.GetEnvironmentVariable("WATCHDOG_PID"), out int pid) && pid != Environment.ProcessId) return null;
        return TimeSpan.FromMicroseconds(usec / 2);
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var interval = Interval()!.Value;
        // Keep-alives begin one interval after the host started (READY=1 is sent then), not before.
        try
        {
            await Task.Delay(Timeout.Infinite, CancellationTokenSource.CreateLinkedTokenSource(lifetime.ApplicationStarted, stoppingToken).Token);
        }
        catch (OperationCanceledException)
        {
            if (stoppingToken.IsCancellationRequested) return;
        }
        try
        {
            await Task.Delay(interval, stoppingToken);
        }
        catch (OperationCanceledException)
        {
            return;
        }
        long[] last = [];
        bool reported = false;
        while (!stoppingToken.IsCancellationRequested)
        {
            var reactors = target.Runtime?.Reactors.Reactors ?? [];
            if (last.Length != reactors.Count) last = new long[reactors.Count];
            int stuck = ReactorHealth.FirstStuck(reactors.Select(r => (r.IsSleeping, r.Heartbeat)).ToList(), last);
            if (stuck < 0)
            {
                notifier.Notify(new ServiceState("WATCHDOG=1"));
                reported = false;
            }
            else if (!reported)
            {
                _log.LogError("reactor {Reactor} made no progress for {Interval}; watchdog keep-alives withheld", stuck, interval);
                reported = true;
            }
            try
            {
                await Task.Delay(interval, stoppingToken);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }
}

/// <summary>Tells a stuck reactor from a busy or sleeping one, between two looks.</summary>
public static class ReactorHealth
{
    /// <summary>Index of the first reactor that is awake and made no loop iteration since <paramref name="last"/>
    /// (its heartbeats at the previous look, updated here), or -1 when all are healthy.</summary>
    public static int FirstStuck(IReadOnlyList<(bool Sleeping, long Heartbeat)> now, long[] last)
    {
        int stuck = -1;
        for (int i = 0; i < now.Count; i++)
        {
            if (stuck < 0 && !now[i].Sleeping && now[i].Heartbeat == last[i]) stuck = i;
            last[i] = now[i].Heartbeat;
        }
        return stuck;
    }
}
