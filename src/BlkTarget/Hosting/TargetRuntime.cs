using BlkTarget.Configuration;
using BlkTarget.Storage;
using BlkTarget.Storage.Image;
using BlkTarget.Storage.RawFile;
using BlkTarget.Storage.Ram;
using BlkTarget.Vhost.Blk;
using BlkTarget.Vhost.Device;
using BlkTarget.Vhost.Protocol;
using BlkTarget.Vhost.Reactor;
using BlkTarget.Vhost.Scsi;
using Microsoft.Extensions.Logging;

namespace BlkTarget.Hosting;

/// <summary>
/// The running target: reactors, one backend + device model + socket server per export. Start either brings
/// everything up or releases what it had started and throws one clear error.
/// </summary>
public sealed class TargetRuntime : IDisposable
{
    private readonly ReactorPool _reactors;
    private readonly VhostUserSessionOptions _sessionOptions;
    private readonly List<IBlockDevice> _backends = [];
    private readonly List<VhostUserServer> _servers = [];
    private readonly ILogger _log;

    private TargetRuntime(ReactorPool reactors, VhostUserSessionOptions sessionOptions, ILogger log)
    {
        _reactors = reactors;
        _sessionOptions = sessionOptions;
        _log = log;
    }

    public IReadOnlyList<VhostUserServer> Servers => _servers;
    public ReactorPool Reactors => _reactors;

    public static TargetRuntime Start(TargetSettings settings, ILoggerFactory loggers)
    {
        var log = loggers.CreateLogger("blktarget");
        int maxQueues = settings.Devices.Max(d => d.Queues);
        var reactors = new ReactorPool(settings.Cpus, DefaultReactorCount(maxQueues, Environment.ProcessorCount), settings.IdlePoll,
            loggers.CreateLogger("reactor"));
        var runtime = new TargetRuntime(reactors, new VhostUserSessionOptions { DrainTimeout = settings.DrainTimeout }, log);
        try
        {
            int offset = 0;
            foreach (var device in settings.Devices)
            {
                offset += runtime.StartDevice(device, offset, loggers.CreateLogger($"device.{device.Name}"));
            }
        }
        catch
        {
            runtime.Dispose();
            throw;
        }
        log.LogInformation("reactors: {Count} ({Placement})", reactors.Reactors.Count,
            settings.Cpus.Count > 0 ? "pinned to CPUs " + string.Join(",", settings.Cpus) : "unpinned");
        return runtime;
    }

    /// <summary>
    /// Unpinned reactors when no --cpus is given: one per queue, but at most half the CPUs, because the VMs'
    /// vCPUs and QEMU need the rest; on a 2-CPU host one polling reactor beats two that preempt each other
    /// (bench/README.md has the measurements).
    /// </summary>
    public static int DefaultReactorCount(int maxQueues, int processorCount) => Math.Max(1, Math.Min(maxQueues, processorCount / 2));

    private int StartDevice(DeviceSettings device, int offset, ILogger log)
    {
        IVhostUserDevice model;
        if (device.Kind == "scsi")
        {
            var luns = new List<ScsiLunDefinition>();
            foreach (var lun in device.Luns)
            {
                var backend = OpenBackend($"device {device.Name} target {lun.Target} LUN {lun.Lun}", lun.Backend, lun.BlockSize, lun.ReadOnly, lun.CreateSize, log);
                string serial = lun.Serial.Length > 0 ? lun.Serial
                    : device.Luns.Count == 1 ? DeviceSerial(device) : $"{DeviceSerial(device)}-{lun.Target}-{lun.Lun}";
                luns.Add(new ScsiLunDefinition((byte)lun.Target, (ushort)lun.Lun, backend, serial, lun.WriteCache));
            }
            try
            {
                model = new VirtioScsiDevice(device.Name, luns, new ScsiOptions { RequestQueues = device.Queues }, log);
            }
            catch (ArgumentException e)
            {
                throw new ConfigurationException($"device {device.Name}: {e.Message}");
            }
        }
        else
        {
            var backend = OpenBackend($"device {device.Name}", device.Backend, device.BlockSize, device.ReadOnly, device.CreateSize, log);
            var options = new BlkOptions
            {
                Queues = device.Queues,
                Serial = DeviceSerial(device),
                WriteCache = device.WriteCache,
            };
            model = new VirtioBlkDevice(device.Name, backend, options, log);
        }
        try
        {
            _servers.Add(VhostUserServer.Start(device.Socket, model, _reactors, offset, log, _sessionOptions));
        }
        catch (IOException e)
        {
            throw new ConfigurationException($"device {device.Name}: {e.Message}");
        }
        if (device.Kind == "scsi")
        {
            _log.LogInformation("device {Name}: vhost-user-scsi on {Socket}, {Queues} request queue(s), {Luns} LUN(s)", device.Name, device.Socket, device.Queues, device.Luns.Count);
            foreach (var lun in device.Luns)
                _log.LogInformation("device {Name}: target {Target} LUN {Lun}: backend {Backend}, block size {BlockSize}{ReadOnly}",
                    device.Name, lun.Target, lun.Lun, lun.Backend, lun.BlockSize, lun.ReadOnly ? ", read-only" : "");
        }
        else
        {
            _log.LogInformation("device {Name}: vhost-user-blk on {Socket}, backend {Backend}, {Queues} queue(s), block size {BlockSize}{ReadOnly}",
                device.Name, device.Socket, device.Backend, device.Queues, device.BlockSize, device.ReadOnly ? ", read-only" : "");
        }
        return model.QueueCount;
    }

    private static string DeviceSerial(DeviceSettings device) => device.Serial.Length > 0 ? device.Serial : device.Name;

    private IBlockDevice OpenBackend(string what, BackendSpec spec, uint blockSize, bool readOnly, ulong? createSize, ILogger log)
    {
        IBlockDevice backend;
        try
        {
            backend = spec.Kind switch
            {
                "ram" => new RamDisk(spec.SizeBytes, blockSize, readOnly, spec.Pages),
                "file" => FileDisk.Open(new FileDiskOptions
                {
                    Path = spec.Path!,
                    DirectIo = spec.DirectIo,
                    ReadOnly = readOnly,
                    BlockSize = blockSize,
                    CreateSize = createSize,
                }, log),
                "image" => OpenImage(spec, blockSize, readOnly, createSize, log),
                _ => throw new ConfigurationException($"{what}: backend kind {spec.Kind} is not supported"),
            };
        }
        catch (Exception e) when (e is IOException or ArgumentException)
        {
            throw new ConfigurationException($"{what}: {e.Message}");
        }
        _backends.Add(backend);
        return backend;
    }

    private static ImageDisk OpenImage(BackendSpec spec, uint blockSize, bool readOnly, ulong? createSize, ILogger log)
    {
        if (createSize is ulong size)
        {
            if (readOnly) throw new IOException("--create makes no sense for a read-only export");
            ImageFile.Create(spec.Path!, size);
        }
        return ImageDisk.Open(spec.Path!, readOnly, blockSize, spec.DirectIo, log);
    }

    /// <summary>Stops accepting, lets each session drain its in-flight requests, removes the sockets, then
    /// stops the reactors and frees the backends.</summary>
    public void Dispose()
    {
        foreach (var server in _servers) server.Dispose();
        _servers.Clear();
        _reactors.Dispose();
        foreach (var backend in _backends) backend.Dispose();
        _backends.Clear();
    }
}
