using System.Text;
using BlkTarget.Configuration;
using BlkTarget.Vhost.Blk;
using BlkTarget.Vhost.Device;
using BlkTarget.Vhost.Protocol;
using BlkTarget.Vhost.Reactor;
using BlkTarget.Vhost.Scsi;
using Microsoft.Extensions.Logging;

namespace BlkTarget.Management;

/// <summary>
/// The target's disks and exports, and the one way they are created and deleted (startup from flags or a config
/// file, and RPC). Every method validates first and either completes or leaves everything as it was, throwing
/// <see cref="ManagementException"/>. Methods are serialised by one lock; they run outside the data path (an
/// export's queues reach reactors only through its vhost-user session, which posts to their mailboxes).
/// </summary>
public sealed class TargetModel : IDisposable
{
    public const int MaxNameLength = 64;

    private readonly object _gate = new();
    private readonly ReactorPool _reactors;
    private readonly VhostUserSessionOptions _sessionOptions;
    private readonly ILoggerFactory _loggers;
    private readonly ILogger _log;
    private readonly Dictionary<string, ManagedDisk> _disks = [];
    private readonly Dictionary<string, ManagedExport> _exports = [];
    private readonly List<string> _diskOrder = [];
    private readonly List<string> _exportOrder = [];
    private int _nextReactorOffset;

    public TargetModel(ReactorPool reactors, VhostUserSessionOptions sessionOptions, ILoggerFactory loggers)
    {
        _reactors = reactors;
        _sessionOptions = sessionOptions;
        _loggers = loggers;
        _log = loggers.CreateLogger("blktarget");
    }

    public ReactorPool Reactors => _reactors;

    /// <summary>Group and mode every export's socket gets (null: as created).</summary>
    public Configuration.SocketAccess? SocketAccess { get; init; }

    /// <summary>The disks in creation order (a snapshot).</summary>
    public IReadOnlyList<ManagedDisk> Disks { get { lock (_gate) return _diskOrder.Select(n => _disks[n]).ToList(); } }

    /// <summary>The exports in creation order (a snapshot).</summary>
    public IReadOnlyList<ManagedExport> Exports { get { lock (_gate) return _exportOrder.Select(n => _exports[n]).ToList(); } }

    /// <summary>Runs <paramref name="change"/> under the model's lock, so that a change and what follows it
    /// (persisting, undoing) are one step for every other client.</summary>
    public T Serialised<T>(Func<T> change)
    {
        lock (_gate) return change();
    }

    /// <summary>Opens a disk. Errors: InvalidParams (bad name/spec), AlreadyExists (name, or a file another disk
    /// has open), ResourceError (open failed).</summary>
    public ManagedDisk CreateDisk(DiskSpec spec)
    {
        lock (_gate)
        {
            ValidateName("disk", spec.Name);
            if (_disks.ContainsKey(spec.Name)) throw new ManagementException(RpcErrorCode.AlreadyExists, $"disk {spec.Name} exists");
            ValidateDisk(spec);
            if (spec.Backend.Medium is { } medium && _disks.Values.FirstOrDefault(d => d.Spec.Backend.Medium == medium) is { } same)
                throw new ManagementException(RpcErrorCode.AlreadyExists, $"{medium} is disk {same.Spec.Name}'s; a file or image backs one disk (create that disk shared to export it twice)");
            var backend = DiskOpener.Open(spec, _loggers.CreateLogger($"disk.{spec.Name}"));
            SharedLogicalUnit logicalUnit;
            try
            {
                logicalUnit = DiskOpener.OpenLogicalUnit(spec);
            }
            catch
            {
                backend.Dispose();
                throw;
            }
            var disk = new ManagedDisk(spec, backend, logicalUnit);
            disk.Qos.Set(spec.Qos);
            if (backend is Storage.IExternalResizeSource source) source.ExternallyResized += size => OnExternallyResized(disk, size);
            _disks.Add(spec.Name, disk);
            _diskOrder.Add(spec.Name);
            _log.LogInformation("disk {Name}: {Backend}, {Size} bytes, block size {BlockSize}{ReadOnly}{Shared}", spec.Name, spec.Backend,
                backend.Info.SizeBytes, spec.BlockSize, spec.ReadOnly ? ", read-only" : "", spec.Shared ? ", shared" : "");
            return disk;
        }
    }

    /// <summary>Closes a disk. Errors: NotFound, InUse (attached to an export). With <paramref name="removeCreatedFile"/>
    /// a file the disk's create made is removed too (undoing a create).
    /// <paramref name="commit"/> runs once the delete is known to be allowed, before anything changes: if it throws,
    /// nothing is deleted.</summary>
    public void DeleteDisk(string name, bool removeCreatedFile = false, Action? commit = null)
    {
        lock (_gate)
        {
            var disk = FindDisk(name);
            if (disk.AttachedTo.Count > 0)
                throw new ManagementException(RpcErrorCode.InUse, $"disk {name} is attached to export {string.Join(", ", disk.AttachedTo)}; delete the export first");
            commit?.Invoke();
            _disks.Remove(name);
            _diskOrder.Remove(name);
            disk.Backend.Dispose();
            disk.LogicalUnit.Dispose();
            disk.Qos.Set(Vhost.Qos.QosLimits.None);   // leaves the process-wide "anything limited" count right
            if (removeCreatedFile) DiskOpener.RemoveCreated(disk.Spec);
            _log.LogInformation("disk {Name}: deleted", name);
        }
    }

    /// <summary>
    /// Grows a disk online to <paramref name="newSizeBytes"/> and tells every export using it: a blk export updates
    /// its config space and sends the connected frontend VHOST_USER_BACKEND_CONFIG_CHANGE_MSG (QEMU re-reads the
    /// config, the guest sees the new capacity); a scsi export raises CAPACITY DATA HAS CHANGED on the LUNs and
    /// sends a PARAM_CHANGE event. Returns the exports whose frontend was sent a config change.
    /// Errors: NotFound, InvalidParams (not larger, not whole blocks, past the medium), Unsupported, ResourceError.
    /// </summary>
    public IReadOnlyList<string> ResizeDisk(string name, ulong newSizeBytes)
    {
        lock (_gate)
        {
            var disk = FindDisk(name);
            try
            {
                disk.Backend.Resize(newSizeBytes);
            }
            catch (ArgumentException e)
            {
                throw new ManagementException(RpcErrorCode.InvalidParams, $"disk {name}: {e.Message}");
            }
            catch (NotSupportedException e)
            {
                throw new ManagementException(RpcErrorCode.Unsupported, $"disk {name}: {e.Message}");
            }
            catch (IOException e)
            {
                throw new ManagementException(RpcErrorCode.ResourceError, $"disk {name}: {e.Message}");
            }
            var notified = NotifyResized(disk);
            _log.LogInformation("disk {Name}: grown to {Size} bytes; config change sent to {Exports}", name, newSizeBytes,
                notified.Count == 0 ? "no frontend" : string.Join(", ", notified));
            return notified;
        }
    }

    /// <summary>The disk's medium grew outside the target (rbd resize by another client) and the backend published the
    /// new size: the exports tell their guests as after <see cref="ResizeDisk"/>. A disk deleted meanwhile is ignored.</summary>
    private void OnExternallyResized(ManagedDisk disk, ulong newSizeBytes)
    {
        lock (_gate)
        {
            if (!_disks.TryGetValue(disk.Spec.Name, out var current) || current != disk) return;
            var notified = NotifyResized(disk);
            _log.LogInformation("disk {Name}: grown outside to {Size} bytes; config change sent to {Exports}", disk.Spec.Name, newSizeBytes,
                notified.Count == 0 ? "no frontend" : string.Join(", ", notified));
        }
    }

    /// <summary>Tells every export of the disk its new size; returns those whose frontend was sent a config change.</summary>
    private List<string> NotifyResized(ManagedDisk disk)
    {
        var notified = new List<string>();
        foreach (var exportName in disk.AttachedTo)
        {
            var export = _exports[exportName];
            if (export.Device.MediumResized(disk.Backend) && export.Server.NotifyConfigChanged()) notified.Add(exportName);
        }
        return notified;
    }

    /// <summary>
    /// Hot-adds a LUN to a running scsi export (<see cref="ScsiDeviceContext.AddLun"/>: the guest is sent a RESCAN
    /// event and finds the LUN without a manual rescan). Errors: NotFound (export or disk), InvalidParams (not a scsi
    /// export, address taken or out of range, serial), InUse (disk attached writable elsewhere and not shared).
    /// <paramref name="commit"/> runs after validation, before anything changes (persisting the new spec).
    /// </summary>
    public void AddLun(string exportName, ScsiLunSpec lunSpec, Func<ExportSpec, Action>? commit = null)
    {
        lock (_gate)
        {
            var export = FindScsiExport(exportName);
            var disk = FindDisk(lunSpec.Disk);
            var next = export.Spec with { Luns = [.. export.Spec.Luns, lunSpec] };
            ValidateExport(next);
            if (export.Spec.Luns.Any(l => l.Disk == disk.Spec.Name))
                throw new ManagementException(RpcErrorCode.InvalidParams, $"export {exportName}: disk {disk.Spec.Name} already backs a LUN of it");
            CheckAttachable(disk);
            var undo = commit?.Invoke(next);
            var device = (VirtioScsiDevice)export.Device;
            string serial = lunSpec.Serial.Length > 0 ? lunSpec.Serial : $"{export.Spec.EffectiveSerial}-{lunSpec.Target}-{lunSpec.Lun}";
            try
            {
                device.Context.AddLun(new ScsiLunDefinition((byte)lunSpec.Target, (ushort)lunSpec.Lun, disk.Backend, serial, lunSpec.WriteCache, disk.LogicalUnit, disk.Qos));
            }
            catch (ArgumentException e)
            {
                undo?.Invoke();
                throw new ManagementException(RpcErrorCode.InvalidParams, $"export {exportName}: {e.Message}");
            }
            export.Spec = next;
            disk.AttachedTo.Add(exportName);
            _log.LogInformation("export {Name}: LUN {Target}:{Lun} added (disk {Disk})", exportName, lunSpec.Target, lunSpec.Lun, disk.Spec.Name);
        }
    }

    /// <summary>
    /// Hot-removes a LUN: commands to it drain, the guest is sent a REMOVED event, the disk is detached. Errors:
    /// NotFound, InvalidParams (the export's last LUN), ResourceError (commands did not drain within the drain timeout:
    /// the LUN is gone from the guest's view, the disk stays attached).
    /// </summary>
    public void RemoveLun(string exportName, int target, int lun, Func<ExportSpec, Action>? commit = null)
    {
        lock (_gate)
        {
            var export = FindScsiExport(exportName);
            var spec = export.Spec.Luns.FirstOrDefault(l => l.Target == target && l.Lun == lun)
                ?? throw new ManagementException(RpcErrorCode.NotFound, $"export {exportName} has no LUN {target}:{lun}");
            if (export.Spec.Luns.Count == 1)
                throw new ManagementException(RpcErrorCode.InvalidParams, $"LUN {target}:{lun} is export {exportName}'s last; delete the export instead");
            var next = export.Spec with { Luns = export.Spec.Luns.Where(l => l != spec).ToList() };
            var undo = commit?.Invoke(next);
            var device = (VirtioScsiDevice)export.Device;
            try
            {
                device.Context.RemoveLun((byte)target, (ushort)lun, _sessionOptions.DrainTimeout);
            }
            catch (ArgumentException e)
            {
                undo?.Invoke();
                throw new ManagementException(RpcErrorCode.InvalidParams, $"export {exportName}: {e.Message}");
            }
            catch (TimeoutException e)
            {
                export.Spec = next;
                throw new ManagementException(RpcErrorCode.ResourceError, $"export {exportName}: {e.Message}");
            }
            export.Spec = next;
            _disks[spec.Disk].AttachedTo.Remove(exportName);
            _log.LogInformation("export {Name}: LUN {Target}:{Lun} removed (disk {Disk})", exportName, target, lun, spec.Disk);
        }
    }

    private ManagedExport FindScsiExport(string name)
    {
        if (!_exports.TryGetValue(name, out var export)) throw new ManagementException(RpcErrorCode.NotFound, $"no export {name}");
        if (export.Spec.Kind != "scsi") throw new ManagementException(RpcErrorCode.InvalidParams, $"export {name} is not a scsi export");
        return export;
    }

    private static void CheckAttachable(ManagedDisk disk)
    {
        if (disk.Spec.ReadOnly || disk.Spec.Shared || disk.AttachedTo.Count == 0) return;
        throw new ManagementException(RpcErrorCode.InUse,
            $"disk {disk.Spec.Name} is attached writable to export {disk.AttachedTo[0]}; a disk goes to one export at a time unless created shared");
    }

    /// <summary>Starts serving an export on its socket. Errors: InvalidParams, AlreadyExists (name or socket),
    /// NotFound (disk), InUse (disk attached writable elsewhere and not shared), ResourceError (socket).
    /// On failure no socket file is left behind.</summary>
    public ManagedExport CreateExport(ExportSpec spec)
    {
        lock (_gate)
        {
            ValidateName("export", spec.Name);
            if (_exports.ContainsKey(spec.Name)) throw new ManagementException(RpcErrorCode.AlreadyExists, $"export {spec.Name} exists");
            ValidateExport(spec);
            string socket = Path.GetFullPath(spec.Socket);
            var other = _exports.Values.FirstOrDefault(e => Path.GetFullPath(e.Spec.Socket) == socket);
            if (other is not null) throw new ManagementException(RpcErrorCode.AlreadyExists, $"socket {spec.Socket} is export {other.Spec.Name}'s");
            var disks = spec.DiskNames.Select(FindDisk).ToList();
            if (disks.Select(d => d.Spec.Name).Distinct().Count() != disks.Count)
                throw new ManagementException(RpcErrorCode.InvalidParams, $"export {spec.Name}: a disk backs two LUNs");
            foreach (var disk in disks) CheckAttachable(disk);
            var log = _loggers.CreateLogger($"device.{spec.Name}");
            var qos = new Vhost.Qos.QosLimiter();
            qos.Set(spec.Qos);
            IVhostUserDevice device = BuildDevice(spec, disks, qos, log);
            VhostUserServer server;
            try
            {
                server = VhostUserServer.Start(spec.Socket, device, _reactors, _nextReactorOffset, log, _sessionOptions);
            }
            catch (Exception e) when (e is IOException or ArgumentException)
            {
                throw new ManagementException(RpcErrorCode.ResourceError, $"export {spec.Name}: {e.Message}");
            }
            try
            {
                SocketPermissions.Apply(spec.Socket, SocketAccess);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                server.Dispose();
                throw new ManagementException(RpcErrorCode.ResourceError, $"export {spec.Name}: {e.Message}");
            }
            var export = new ManagedExport(spec, device, server, _nextReactorOffset, qos);
            _nextReactorOffset += device.QueueCount;
            _exports.Add(spec.Name, export);
            _exportOrder.Add(spec.Name);
            foreach (var disk in disks) disk.AttachedTo.Add(spec.Name);
            if (spec.Kind == "scsi")
                _log.LogInformation("export {Name}: vhost-user-scsi on {Socket}, {Queues} request queue(s), LUNs {Luns}", spec.Name, spec.Socket, spec.Queues,
                    string.Join(", ", spec.Luns.Select(l => $"{l.Target}:{l.Lun}={l.Disk}")));
            else
                _log.LogInformation("export {Name}: vhost-user-blk on {Socket}, disk {Disk}, {Queues} queue(s)", spec.Name, spec.Socket, spec.Disk, spec.Queues);
            return export;
        }
    }

    /// <summary>Stops an export: stops accepting, lets a connected frontend's in-flight requests complete, closes
    /// its connection, removes the socket file and detaches its disks. Errors: NotFound. <paramref name="commit"/>
    /// runs before anything changes; if it throws, nothing is deleted.</summary>
    public void DeleteExport(string name, Action? commit = null)
    {
        lock (_gate)
        {
            if (!_exports.TryGetValue(name, out var export)) throw new ManagementException(RpcErrorCode.NotFound, $"no export {name}");
            commit?.Invoke();
            export.Server.Dispose();
            export.Qos.Set(Vhost.Qos.QosLimits.None);   // leaves the process-wide "anything limited" count right
            _exports.Remove(name);
            _exportOrder.Remove(name);
            foreach (var diskName in export.Spec.DiskNames) _disks[diskName].AttachedTo.Remove(name);
            _log.LogInformation("export {Name}: deleted", name);
        }
    }

    /// <summary>
    /// Changes the QoS limits of export or disk <paramref name="name"/> at run time: the queues apply them from their
    /// next request on, without a reconnect. Returns the limits it had, for an undo. Errors: NotFound. A disk's limits
    /// apply through every export of it: blk exports and the scsi LUNs it backs.
    /// </summary>
    public Vhost.Qos.QosLimits SetQos(bool disk, string name, Vhost.Qos.QosLimits limits)
    {
        lock (_gate)
        {
            if (disk)
            {
                var d = FindDisk(name);
                var old = d.Spec.Qos;
                d.Spec = d.Spec with { Qos = limits };
                d.Qos.Set(limits);
                _log.LogInformation("disk {Name}: QoS {Limits}", name, limits);
                WakeReactors();
                return old;
            }
            if (!_exports.TryGetValue(name, out var export)) throw new ManagementException(RpcErrorCode.NotFound, $"no export {name}");
            var previous = export.Spec.Qos;
            export.Spec = export.Spec with { Qos = limits };
            export.Qos.Set(limits);
            _log.LogInformation("export {Name}: QoS {Limits}", name, limits);
            WakeReactors();
            return previous;
        }
    }

    /// <summary>A reactor whose only queued work is a request held back by QoS sleeps until that request's tokens are
    /// due under the old limits; waking it makes the held request ask the new limits now.</summary>
    private void WakeReactors()
    {
        foreach (var reactor in _reactors.Reactors) reactor.Post(static () => { });
    }

    private IVhostUserDevice BuildDevice(ExportSpec spec, List<ManagedDisk> disks, Vhost.Qos.QosLimiter qos, ILogger log)
    {
        if (spec.Kind == "scsi")
        {
            var luns = new List<ScsiLunDefinition>();
            for (int i = 0; i < spec.Luns.Count; i++)
            {
                var lun = spec.Luns[i];
                string serial = lun.Serial.Length > 0 ? lun.Serial
                    : spec.Luns.Count == 1 ? spec.EffectiveSerial : $"{spec.EffectiveSerial}-{lun.Target}-{lun.Lun}";
                luns.Add(new ScsiLunDefinition((byte)lun.Target, (ushort)lun.Lun, disks[i].Backend, serial, lun.WriteCache, disks[i].LogicalUnit, disks[i].Qos));
            }
            try
            {
                return new VirtioScsiDevice(spec.Name, luns, new ScsiOptions { RequestQueues = spec.Queues, ExportQos = qos }, log);
            }
            catch (ArgumentException e)
            {
                throw new ManagementException(RpcErrorCode.InvalidParams, $"export {spec.Name}: {e.Message}");
            }
        }
        // Only a shared disk can have other writers (a SCSI export's COMPARE AND WRITE among them): only there do
        // this export's writes pay for the gate.
        return new VirtioBlkDevice(spec.Name, disks[0].Backend,
            new BlkOptions { Queues = spec.Queues, Serial = spec.EffectiveSerial, WriteCache = spec.WriteCache, ExportQos = qos, DiskQos = disks[0].Qos }, log,
            disks[0].Spec.Shared ? disks[0].LogicalUnit.Gate : null);
    }

    private ManagedDisk FindDisk(string name) =>
        _disks.TryGetValue(name, out var disk) ? disk : throw new ManagementException(RpcErrorCode.NotFound, $"no disk {name}");

    private static void ValidateName(string what, string name)
    {
        if (name.Length is 0 or > MaxNameLength || !name.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or '-'))
            throw new ManagementException(RpcErrorCode.InvalidParams, $"{what} name '{name}' must be 1-{MaxNameLength} letters, digits, '.', '_' or '-'");
    }

    private static ManagementException Invalid(string message) => new(RpcErrorCode.InvalidParams, message);

    private static void ValidateDisk(DiskSpec d)
    {
        if (d.BlockSize is not (512 or 4096)) throw Invalid($"disk {d.Name}: block size must be 512 or 4096, not {d.BlockSize}");
        if (d.CreateSize is not null && !d.Backend.CanCreate) throw Invalid($"disk {d.Name}: create only applies to file and image backends");
        if (d.CreateSize is not null && d.ReadOnly) throw Invalid($"disk {d.Name}: create makes no sense for a read-only disk");
        if (d.Backend.Kind == "ram" && d.Backend.SizeBytes % d.BlockSize != 0)
            throw Invalid($"disk {d.Name}: size {d.Backend.SizeBytes} is not a multiple of the block size {d.BlockSize}");
    }

    private static void ValidateExport(ExportSpec e)
    {
        string where = $"export {e.Name}";
        if (e.Kind == "blk")
        {
            if (string.IsNullOrEmpty(e.Disk)) throw Invalid($"{where}: a blk export names its disk");
            if (e.Luns.Count > 0) throw Invalid($"{where}: LUNs apply only to scsi exports");
            if (e.Queues is < 1 or > SettingsValidator.MaxQueues) throw Invalid($"{where}: queues must be between 1 and {SettingsValidator.MaxQueues}, not {e.Queues}");
        }
        else if (e.Kind == "scsi")
        {
            if (e.Queues is < 1 or > SettingsValidator.MaxScsiRequestQueues)
                throw Invalid($"{where}: a scsi export has 1 to {SettingsValidator.MaxScsiRequestQueues} request queues, not {e.Queues}");
            if (e.Luns.Count == 0) throw Invalid($"{where}: a scsi export needs at least one LUN");
            var seen = new HashSet<(int, int)>();
            foreach (var l in e.Luns)
            {
                if (l.Target is < 0 or > 255) throw Invalid($"{where}: target {l.Target} must be between 0 and 255");
                if (l.Lun is < 0 or > 16383) throw Invalid($"{where} target {l.Target}: LUN {l.Lun} must be between 0 and 16383");
                if (!seen.Add((l.Target, l.Lun))) throw Invalid($"{where} target {l.Target} LUN {l.Lun}: defined twice");
                CheckSerial($"{where} target {l.Target} LUN {l.Lun}", l.Serial, SettingsValidator.MaxScsiSerial);
            }
        }
        else throw Invalid($"{where}: kind '{e.Kind}' is not supported (supported: blk, scsi)");
        CheckSerial(where, e.EffectiveSerial, e.Kind == "scsi" ? SettingsValidator.MaxScsiSerial : 20);
        if (string.IsNullOrWhiteSpace(e.Socket)) throw Invalid($"{where}: a socket path is required");
        string full = Path.GetFullPath(e.Socket);
        if (Encoding.UTF8.GetByteCount(full) > 107) throw Invalid($"{where}: socket path {e.Socket} is longer than a Unix socket allows (107 bytes)");
        if (Path.GetDirectoryName(full) is { } directory && !Directory.Exists(directory))
            throw Invalid($"{where}: directory of socket {e.Socket} does not exist");
    }

    private static void CheckSerial(string where, string serial, int max)
    {
        if (serial.Length > max || serial.Any(c => c < 0x20 || c > 0x7e))
            throw Invalid($"{where}: serial must be at most {max} printable ASCII characters");
    }

    /// <summary>Deletes every export (draining connected frontends); the disks stay open.</summary>
    public void StopExports()
    {
        lock (_gate)
            foreach (var name in _exportOrder.ToList()) DeleteExport(name);
    }

    /// <summary>Deletes every export, then closes every disk.</summary>
    public void Dispose()
    {
        lock (_gate)
        {
            StopExports();
            foreach (var disk in _disks.Values) disk.Backend.Dispose();
            _disks.Clear();
            _diskOrder.Clear();
        }
    }
}
