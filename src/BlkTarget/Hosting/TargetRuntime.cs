using BlkTarget.Configuration;
using BlkTarget.Storage;
using BlkTarget.Storage.Image;
using BlkTarget.Storage.RawFile;
using BlkTarget.Storage.Ram;
using BlkTarget.Vhost.Blk;
using BlkTarget.Vhost.Protocol;
using BlkTarget.Vhost.Reactor;
using Microsoft.Extensions.Logging;

namespace BlkTarget.Hosting;

/// <summary>
/// The running target: reactors, one backend + device model + socket server per export. Start either brings
/// everything up or releases what it had started and throws one clear error.
/// </summary>
public sealed class TargetRuntime : IDisposable
{
    private readonly ReactorPool _reactors;
    private readonly List<IBlockDevice> _backends = [];
    private readonly List<VhostUserServer> _servers = [];
    private readonly ILogger _log;

    private TargetRuntime(ReactorPool reactors, ILogger log)
    {
        _reactors = reactors;
        _log = log;
    }

    public IReadOnlyList<VhostUserServer> Servers => _servers;
    public ReactorPool Reactors => _reactors;

    public static TargetRuntime Start(TargetSettings settings, ILoggerFactory loggers)
    {
        var log = loggers.CreateLogger("blktarget");
        int maxQueues = settings.Devices.Max(d => d.Queues);
        var reactors = new ReactorPool(settings.Cpus, Math.Min(maxQueues, Environment.ProcessorCount), settings.IdlePoll);
        var runtime = new TargetRuntime(reactors, log);
        try
        {
            int offset = 0;
            foreach (var device in settings.Devices)
            {
                runtime.StartDevice(device, offset, loggers.CreateLogger($"device.{device.Name}"));
                offset += device.Queues;
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

    private void StartDevice(DeviceSettings device, int offset, ILogger log)
    {
        IBlockDevice backend;
        try
        {
            backend = device.Backend.Kind switch
            {
                "ram" => new RamDisk(device.Backend.SizeBytes, device.BlockSize, device.ReadOnly),
                "file" => FileDisk.Open(new FileDiskOptions
                {
                    Path = device.Backend.Path!,
                    DirectIo = device.Backend.DirectIo,
                    ReadOnly = device.ReadOnly,
                    BlockSize = device.BlockSize,
                    CreateSize = device.CreateSize,
                }, log),
                "image" => OpenImage(device, log),
                _ => throw new ConfigurationException($"device {device.Name}: backend kind {device.Backend.Kind} is not supported"),
            };
        }
        catch (Exception e) when (e is IOException or ArgumentException)
        {
            throw new ConfigurationException($"device {device.Name}: {e.Message}");
        }
        _backends.Add(backend);
        var options = new BlkOptions
        {
            Queues = device.Queues,
            Serial = device.Serial.Length > 0 ? device.Serial : device.Name,
            WriteCache = device.WriteCache,
        };
        var model = new VirtioBlkDevice(device.Name, backend, options, log);
        try
        {
            _servers.Add(VhostUserServer.Start(device.Socket, model, _reactors, offset, log));
        }
        catch (IOException e)
        {
            throw new ConfigurationException($"device {device.Name}: {e.Message}");
        }
        _log.LogInformation("device {Name}: vhost-user-blk on {Socket}, backend {Backend}, {Queues} queue(s), block size {BlockSize}{ReadOnly}",
            device.Name, device.Socket, device.Backend, device.Queues, device.BlockSize, device.ReadOnly ? ", read-only" : "");
    }

    private static ImageDisk OpenImage(DeviceSettings device, ILogger log)
    {
        if (device.CreateSize is ulong size)
        {
            if (device.ReadOnly) throw new IOException("--create makes no sense for a read-only export");
            ImageFile.Create(device.Backend.Path!, size);
        }
        return ImageDisk.Open(device.Backend.Path!, device.ReadOnly, device.BlockSize, device.Backend.DirectIo, log);
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
