using System.CommandLine;
using BlkTarget.Configuration;
using BlkTarget.Hosting;
using BlkTarget.Management;
using System.Runtime.InteropServices;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Serilog;
using Serilog.Events;

namespace BlkTarget.Commands;

/// <summary>`blktarget serve`: one device from flags, several from --config, or none (added later over RPC).</summary>
public static class ServeCommand
{
    private static readonly Option<string> Kind = new("--kind") { Description = "Device type: blk (vhost-user-blk, default) or scsi (vhost-user-scsi, one LUN: target 0, LUN 0)", DefaultValueFactory = _ => "blk" };
    private static readonly Option<string?> Socket = new("--socket") { Description = "Unix socket path QEMU connects to" };
    private static readonly Option<string?> Backend = new("--backend") { Description = "Storage backend: " + BackendSpec.Usage };
    private static readonly Option<string?> CreateSize = new("--create") { Description = "With file:PATH or image:PATH, create it with this size first (e.g. 10G)" };
    private static readonly Option<int> Queues = new("--queues") { Description = "Number of virtqueues (1-256); for scsi, request queues (1-254)", DefaultValueFactory = _ => 1 };
    private static readonly Option<uint> BlockSize = new("--block-size") { Description = "Logical block size: 512 or 4096", DefaultValueFactory = _ => 512u };
    private static readonly Option<bool> ReadOnly = new("--read-only") { Description = "Export read-only" };
    private static readonly Option<string?> Serial = new("--serial") { Description = "Serial number the guest sees (at most 20 characters)" };
    private static readonly Option<string?> Cpus = new("--cpus") { Description = "CPUs to run reactors on, one pinned reactor each (e.g. 0,1 or 0-3)" };
    private static readonly Option<string?> Config = new("--config") { Description = "JSON config file describing several devices (see config/)" };
    private static readonly Option<int?> IdlePollUs = new("--idle-poll-us") { Description = "Microseconds a reactor keeps polling when idle before it sleeps (default 200)" };
    private static readonly Option<bool> NoWarmUp = new("--no-warm-up") { Description = "Skip the start-up warm-up of the data path (0.3 s of I/O, about 0.45 s of start-up; without it a guest's first second of I/O runs slower)" };
    private static readonly Option<int?> DrainTimeoutS = new("--drain-timeout-s") { Description = "Seconds a queue stop waits for in-flight requests before abandoning them (default 30)" };
    private static readonly Option<string?> ConfigOut = new("--config-out") { Description = "Save every disk/export change to this config file (default: the --config file; without either, changes are not saved)" };
    internal static readonly Option<string?> RpcSocket = new("--rpc-socket") { Description = "JSON-RPC management socket (default: " + "/run/blktarget/rpc.sock as root, else $XDG_RUNTIME_DIR/blktarget/rpc.sock)" };
    private static readonly Option<string?> SocketGroup = new("--socket-group") { Description = "Group of the exports' sockets, so a QEMU running as another user can connect (e.g. kvm)" };
    private static readonly Option<string?> SocketMode = new("--socket-mode") { Description = "Mode of the exports' sockets, octal (e.g. 0660)" };
    private static readonly Option<string?> MetricsListen = new("--metrics-listen") { Description = "Serve Prometheus metrics at http://ADDRESS:PORT/metrics (e.g. 127.0.0.1:9101)" };
    private static readonly Option<string> LogLevel = new("--log-level") { Description = "verbose, debug, information, warning, error", DefaultValueFactory = _ => "information" };

    /// <summary>Options that describe one device: with --config the file describes the devices, so these are refused
    /// rather than silently ignored.</summary>
    private static readonly Option[] PerDeviceOptions = [Kind, Socket, Backend, CreateSize, Queues, BlockSize, ReadOnly, Serial];

    public static Command Create()
    {
        var command = new Command("serve", "Export block devices over vhost-user until SIGINT/SIGTERM")
        {
            Kind, Socket, Backend, CreateSize, Queues, BlockSize, ReadOnly, Serial, Cpus, Config, ConfigOut, RpcSocket, MetricsListen, IdlePollUs,
            DrainTimeoutS, NoWarmUp, SocketGroup, SocketMode, LogLevel,
        };
        command.SetAction(Run);
        return command;
    }

    private static int Run(ParseResult parse)
    {
        TargetSettings settings;
        LogEventLevel level;
        System.Net.IPEndPoint? metricsListen;
        try
        {
            // Parsed here with the rest: a bad value is one line on stderr, not an unhandled exception.
            metricsListen = parse.GetValue(MetricsListen) is { } metrics ? Monitoring.ListenAddress.Parse(metrics) : null;
            settings = BuildSettings(parse);
            SettingsValidator.Validate(settings, Environment.ProcessorCount);
            if (!Enum.TryParse(parse.GetValue(LogLevel), ignoreCase: true, out level))
                throw new ConfigurationException($"unknown log level '{parse.GetValue(LogLevel)}'");
        }
        catch (ConfigurationException e)
        {
            return Program.Fail(e.Message);
        }

        using var serilog = CreateLogger(level);
        using var loggers = LoggerFactory.Create(b => b.AddSerilog(serilog));
        string? rpcSocket = parse.GetValue(RpcSocket);
        var management = new ManagementSettings
        {
            RpcSocket = rpcSocket ?? RpcSocketPath.Default(),
            RpcSocketIsDefault = rpcSocket is null,
            PersistPath = parse.GetValue(ConfigOut) ?? parse.GetValue(Config),
            SaveAtStart = parse.GetValue(ConfigOut) is not null,
            MetricsListen = metricsListen,
        };

        // The target runs as a hosted service: the host's lifetime (the console's, or systemd's under a service
        // manager) owns SIGINT/SIGTERM before the sockets come up, so a signal during start-up still leads to an
        // orderly shutdown, and "started" (systemd's READY=1) means every socket listens.
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true, Args = [] });
        builder.Logging.ClearProviders();
        builder.Logging.AddSerilog(serilog);
        builder.Services.Configure<ConsoleLifetimeOptions>(o => o.SuppressStatusMessages = true);
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(90));
        builder.Services.AddSingleton(new TargetService(settings, loggers, management, parse.GetValue(Config)));
        builder.Services.AddHostedService(sp => sp.GetRequiredService<TargetService>());
        SystemdIntegration.Add(builder.Services);
        using var host = builder.Build();
        var target = host.Services.GetRequiredService<TargetService>();
        // SIGHUP reloads the config file (the default action would end the process); registered before the start
        // so that an early SIGHUP cannot kill the target (a reload before the start completes does nothing).
        using var reload = PosixSignalRegistration.Create(PosixSignal.SIGHUP, context =>
        {
            context.Cancel = true;
            ThreadPool.QueueUserWorkItem(_ => target.Reload());
        });
        try
        {
            host.Start();
        }
        catch (ConfigurationException e)
        {
            return Program.Fail(e.Message);
        }
        host.WaitForShutdown();
        loggers.CreateLogger("blktarget").LogInformation("stopped");
        return 0;
    }

    /// <summary>Console logging; under systemd (stdout to the journal) without timestamps and with each line's
    /// syslog priority as &lt;N&gt;, so journalctl shows the right levels.</summary>
    private static Serilog.Core.Logger CreateLogger(LogEventLevel level)
    {
        // A start that fails is reported as one line by Run, not as the host's error with a stack trace.
        var config = new LoggerConfiguration().MinimumLevel.Is(level)
            .Filter.ByExcluding(e => e.MessageTemplate.Text == "Hosting failed to start");
        if (SystemdIntegration.LogsToJournal)
            return config.Enrich.With(new SyslogPriorityEnricher())
                .WriteTo.Console(outputTemplate: "<{SyslogPriority}>{SourceContext}: {Message:lj}{NewLine}{Exception}")
                .CreateLogger();
        return config.WriteTo.Console(outputTemplate: "{Timestamp:HH:mm:ss.fff} [{Level:u3}] {Message:lj}{NewLine}{Exception}",
                standardErrorFromLevel: LogEventLevel.Warning)
            .CreateLogger();
    }

    private static TargetSettings BuildSettings(ParseResult parse)
    {
        if (parse.GetValue(Config) is { } configPath)
        {
            // An option given on the command line has a non-implicit result; defaults (--kind blk, --queues 1) are implicit.
            var given = PerDeviceOptions.Where(o => parse.GetResult(o) is { Implicit: false }).Select(o => o.Name).ToList();
            if (given.Count > 0)
                throw new ConfigurationException($"--config describes the devices; {string.Join(", ", given)} cannot be combined with it (set per-device options in the config file)");
            var fromFile = ConfigFile.Load(configPath);
            return ApplyCommonFlags(fromFile, parse);
        }
        if (parse.GetValue(Socket) is null && parse.GetValue(Backend) is null)
        {
            // Neither a device nor a config file: an empty target, managed over the RPC socket.
            var given = PerDeviceOptions.Where(o => parse.GetResult(o) is { Implicit: false }).Select(o => o.Name).ToList();
            if (given.Count > 0) throw new ConfigurationException($"{given[0]} needs --socket and --backend");
            return ApplyCommonFlags(new TargetSettings { Devices = [] }, parse);
        }
        string socket = parse.GetValue(Socket) ?? throw new ConfigurationException("--socket is required (or --config FILE)");
        string backendText = parse.GetValue(Backend) ?? throw new ConfigurationException("--backend is required, e.g. --backend ram:1G or --backend file:/var/lib/vm1.img");
        if (!BackendSpec.TryParse(backendText, out var backend, out var error)) throw new ConfigurationException(error!);
        string kind = parse.GetValue(Kind)!;
        if (kind is not ("blk" or "scsi")) throw new ConfigurationException($"--kind: '{kind}' is not a device type (blk or scsi)");
        ulong? createSize = ParseCreate(parse.GetValue(CreateSize));
        var device = new DeviceSettings
        {
            Name = Path.GetFileNameWithoutExtension(socket) is { Length: > 0 } n ? n : "dev0",
            Kind = kind,
            Socket = socket,
            Backend = backend!,
            Queues = parse.GetValue(Queues),
            BlockSize = parse.GetValue(BlockSize),
            ReadOnly = parse.GetValue(ReadOnly),
            Serial = parse.GetValue(Serial) ?? "",
            CreateSize = createSize,
        };
        if (kind == "scsi")
        {
            device = device with
            {
                Luns =
                [
                    new ScsiLunSettings
                    {
                        Backend = device.Backend,
                        CreateSize = createSize,
                        BlockSize = device.BlockSize,
                        ReadOnly = device.ReadOnly,
                    },
                ],
            };
        }
        return ApplyCommonFlags(new TargetSettings { Devices = [device] }, parse);
    }

    private static ulong? ParseCreate(string? text)
    {
        if (text is null) return null;
        if (!SizeParser.TryParse(text, out ulong size) || size == 0) throw new ConfigurationException($"--create: '{text}' is not a size such as 10G");
        return size;
    }

    private static TargetSettings ApplyCommonFlags(TargetSettings settings, ParseResult parse)
    {
        if (parse.GetValue(Cpus) is { } cpuText)
        {
            if (!CpuListParser.TryParse(cpuText, out var cpus, out var error)) throw new ConfigurationException($"--cpus: {error}");
            settings = settings with { Cpus = cpus };
        }
        if (parse.GetValue(IdlePollUs) is int us) settings = settings with { IdlePoll = TimeSpan.FromMicroseconds(us) };
        if (parse.GetValue(DrainTimeoutS) is int seconds) settings = settings with { DrainTimeout = TimeSpan.FromSeconds(seconds) };
        settings = settings with { DataPathWarmUp = parse.GetValue(NoWarmUp) ? TimeSpan.Zero : Hosting.DataPathWarmUp.DefaultDuration };
        string? group = parse.GetValue(SocketGroup), modeText = parse.GetValue(SocketMode);
        if (group is not null || modeText is not null)
        {
            UnixFileMode? mode = null;
            if (modeText is not null)
            {
                if (!SocketAccess.TryParseMode(modeText, out var parsed)) throw new ConfigurationException($"--socket-mode: '{modeText}' is not an octal mode such as 0660");
                mode = parsed;
            }
            settings = settings with { SocketAccess = new SocketAccess(group ?? settings.SocketAccess?.Group, mode ?? settings.SocketAccess?.Mode) };
        }
        // An unknown group fails the start in one line, not every export later.
        if (settings.SocketAccess?.Group is { } socketGroup)
        {
            try
            {
                SocketPermissions.ResolveGroup(socketGroup);
            }
            catch (IOException e)
            {
                throw new ConfigurationException($"socket group: {e.Message}");
            }
        }
        return settings;
    }
}
