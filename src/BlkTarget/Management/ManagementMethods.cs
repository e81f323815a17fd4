using System.Text.Json.Nodes;
using BlkTarget.Configuration;
using BlkTarget.Monitoring;

namespace BlkTarget.Management;

/// <summary>
/// The JSON-RPC methods (names in SPDK's style, parameters and results in snake_case). Shapes:
/// <list type="bullet">
/// <item><c>disk_create {name, backend, create?, block_size?=512, read_only?=false, shared?=false}</c> → disk</item>
/// <item><c>disk_delete {name}</c> → true (InUse while an export uses it)</item>
/// <item><c>disk_resize {name, size}</c> → {name, size_bytes, notified: [export]} (grow only; notified: exports whose
/// connected frontend was sent a config change)</item>
/// <item><c>disk_list {name?}</c> → [disk]; disk = {name, backend, size_bytes, block_size, read_only, shared, exports: [name]}</item>
/// <item><c>export_create_blk {name, socket, disk, queues?=1, serial?=name, write_cache?=true}</c> → export</item>
/// <item><c>export_create_scsi {name, socket, luns: [{target?=0, lun?=0, disk, serial?, write_cache?=true}], queues?=1, serial?=name}</c> → export</item>
/// <item><c>export_delete {name}</c> → true (a connected frontend is drained, then disconnected)</item>
/// <item><c>export_list {name?}</c> → [export]; export = {name, kind, socket, disk | luns, queues, serial, connected,
/// sessions, queue_reactors: [reactor index per queue], frontend?: {features, feature_names, protocol_features, backend_channel,
/// queues: [{index, size, running, reactor, in_flight, broken}], in_flight} (only while a frontend is connected)}</item>
/// <item><c>scsi_lun_add {export, target?=0, lun, disk, serial?, write_cache?=true}</c> → export (hot-plug: the guest
/// is sent a RESCAN event)</item>
/// <item><c>scsi_lun_remove {export, target?=0, lun}</c> → export (commands to it drain; the guest is sent REMOVED)</item>
/// <item><c>qos_set {export | disk, iops_read?, iops_write?, iops_total?, bps_read?, bps_write?, bps_total?, burst_ms?}</c>
/// → {export | disk, qos}: changes the limits at run time (no reconnect) and persists them. Rates are per second
/// (bps: bytes, also "10M"); a parameter left out keeps its value, 0 lifts that limit; burst_ms 0: one second's worth.
/// qos = {iops_read, iops_write, iops_total, bps_read, bps_write, bps_total, burst_ms} (0: unlimited) is also in
/// disk_list and export_list.</item>
/// <item><c>config_save {path?}</c> → {path} (default: the file changes are persisted to)</item>
/// <item><c>stats {export?, disk?, reset?=false, buckets?=false}</c> → request statistics (<see cref="StatsJson"/>): every
/// export, disk and reactor, or one export or one disk. reset: the result holds the counts up to now, and the selected
/// counters start from zero (an export and its disk share counters: resetting one resets the other's part).</item>
/// </list>
/// Sizes are bytes, or strings with binary units ("10G"). Errors: <see cref="RpcErrorCode"/>.
/// </summary>
public sealed class ManagementMethods(ManagementService service)
{
    // One table gives both the dispatch and the names the RPC server registers.
    private static readonly Dictionary<string, Func<ManagementMethods, RpcParams, JsonNode?>> Methods = new()
    {
        ["disk_create"] = (m, p) => m.DiskCreate(p),
        ["disk_delete"] = (m, p) => m.DiskDelete(p),
        ["disk_list"] = (m, p) => m.DiskList(p),
        ["disk_resize"] = (m, p) => m.DiskResize(p),
        ["export_create_blk"] = (m, p) => m.ExportCreateBlk(p),
        ["export_create_scsi"] = (m, p) => m.ExportCreateScsi(p),
        ["export_delete"] = (m, p) => m.ExportDelete(p),
        ["export_list"] = (m, p) => m.ExportList(p),
        ["scsi_lun_add"] = (m, p) => m.ScsiLunAdd(p),
        ["scsi_lun_remove"] = (m, p) => m.ScsiLunRemove(p),
        ["config_save"] = (m, p) => m.ConfigSave(p),
        ["qos_set"] = (m, p) => m.QosSet(p),
        ["stats"] = (m, p) => m.Stats(p),
    };

    /// <summary>Every method name <see cref="Invoke"/> knows.</summary>
    public static IReadOnlyCollection<string> Names => Methods.Keys;

    /// <summary>Runs <paramref name="method"/>; throws <see cref="ManagementException"/> (MethodNotFound for an unknown name).</summary>
    public JsonNode? Invoke(string method, RpcParams p) => Methods.TryGetValue(method, out var run) ? run(this, p)
        : throw new ManagementException(RpcErrorCode.MethodNotFound, $"no method {method}");

    private JsonNode DiskDelete(RpcParams p) => Done(p, () => service.DeleteDisk(p.RequiredString("name")));

    private JsonNode ExportDelete(RpcParams p) => Done(p, () => service.DeleteExport(p.RequiredString("name")));

    private static JsonNode Done(RpcParams p, Action action)
    {
        p.RequiredString("name");
        p.RejectUnknown();
        action();
        return JsonValue.Create(true);
    }

    private JsonNode DiskCreate(RpcParams p)
    {
        string name = p.RequiredString("name");
        string backendText = p.RequiredString("backend");
        string? create = p.OptionalString("create");
        int blockSize = p.Int("block_size", 512);
        bool readOnly = p.Bool("read_only", false);
        bool shared = p.Bool("shared", false);
        p.RejectUnknown();
        if (!BackendSpec.TryParse(backendText, out var backend, out var error)) throw new ManagementException(RpcErrorCode.InvalidParams, error!);
        ulong? createSize = null;
        if (create is not null)
        {
            if (!SizeParser.TryParse(create, out ulong size) || size == 0)
                throw new ManagementException(RpcErrorCode.InvalidParams, $"create: '{create}' is not a size such as 10G");
            createSize = size;
        }
        if (blockSize < 0) throw new ManagementException(RpcErrorCode.InvalidParams, $"block size must be 512 or 4096, not {blockSize}");
        var disk = service.CreateDisk(new DiskSpec
        {
            Name = name, Backend = backend!, CreateSize = createSize, BlockSize = (uint)blockSize, ReadOnly = readOnly, Shared = shared,
        });
        return Describe(disk);
    }

    private JsonNode DiskResize(RpcParams p)
    {
        string name = p.RequiredString("name");
        ulong size = p.Size("size");
        p.RejectUnknown();
        var notified = service.ResizeDisk(name, size);
        return new JsonObject
        {
            ["name"] = name,
            ["size_bytes"] = size,
            ["notified"] = new JsonArray(notified.Select(n => (JsonNode?)n).ToArray()),
        };
    }

    private JsonNode DiskList(RpcParams p)
    {
        string? name = p.OptionalString("name");
        p.RejectUnknown();
        var disks = service.Model.Disks.Where(d => name is null || d.Spec.Name == name).ToList();
        if (name is not null && disks.Count == 0) throw new ManagementException(RpcErrorCode.NotFound, $"no disk {name}");
        return new JsonArray(disks.Select(d => (JsonNode?)Describe(d)).ToArray());
    }

    private JsonNode ExportCreateBlk(RpcParams p)
    {
        var spec = new ExportSpec
        {
            Name = p.RequiredString("name"),
            Kind = "blk",
            Socket = p.RequiredString("socket"),
            Disk = p.RequiredString("disk"),
            Queues = p.Int("queues", 1),
            Serial = p.OptionalString("serial") ?? "",
            WriteCache = p.Bool("write_cache", true),
        };
        p.RejectUnknown();
        return Describe(service.CreateExport(spec));
    }

    private JsonNode ExportCreateScsi(RpcParams p)
    {
        var luns = p.Objects("luns").Select(l =>
        {
            var lun = new ScsiLunSpec
            {
                Target = l.Int("target", 0), Lun = l.Int("lun", 0), Disk = l.RequiredString("disk"),
                Serial = l.OptionalString("serial") ?? "", WriteCache = l.Bool("write_cache", true),
            };
            l.RejectUnknown();
            return lun;
        }).ToList();
        var spec = new ExportSpec
        {
            Name = p.RequiredString("name"),
            Kind = "scsi",
            Socket = p.RequiredString("socket"),
            Queues = p.Int("queues", 1),
            Serial = p.OptionalString("serial") ?? "",
            Luns = luns,
        };
        p.RejectUnknown();
        return Describe(service.CreateExport(spec));
    }

    private JsonNode ScsiLunAdd(RpcParams p)
    {
        string export = p.RequiredString("export");
        var lun = new ScsiLunSpec
        {
            Target = p.Int("target", 0), Lun = p.Int("lun", -1), Disk = p.RequiredString("disk"),
            Serial = p.OptionalString("serial") ?? "", WriteCache = p.Bool("write_cache", true),
        };
        p.RejectUnknown();
        if (lun.Lun < 0) throw new ManagementException(RpcErrorCode.InvalidParams, "parameter 'lun' is required");
        service.AddLun(export, lun);
        return DescribeExport(export);
    }

    private JsonNode ScsiLunRemove(RpcParams p)
    {
        string export = p.RequiredString("export");
        int target = p.Int("target", 0), lun = p.Int("lun", -1);
        p.RejectUnknown();
        if (lun < 0) throw new ManagementException(RpcErrorCode.InvalidParams, "parameter 'lun' is required");
        service.RemoveLun(export, target, lun);
        return DescribeExport(export);
    }

    private JsonNode DescribeExport(string name) => Describe(service.Model.Exports.First(e => e.Spec.Name == name));

    private JsonNode ExportList(RpcParams p)
    {
        string? name = p.OptionalString("name");
        p.RejectUnknown();
        var exports = service.Model.Exports.Where(e => name is null || e.Spec.Name == name).ToList();
        if (name is not null && exports.Count == 0) throw new ManagementException(RpcErrorCode.NotFound, $"no export {name}");
        return new JsonArray(exports.Select(e => (JsonNode?)Describe(e)).ToArray());
    }

    private JsonNode QosSet(RpcParams p)
    {
        string? export = p.OptionalString("export"), disk = p.OptionalString("disk");
        if ((export is null) == (disk is null)) throw new ManagementException(RpcErrorCode.InvalidParams, "give export or disk (one of them)");
        var current = disk is not null
            ? (service.Model.Disks.FirstOrDefault(d => d.Spec.Name == disk) ?? throw new ManagementException(RpcErrorCode.NotFound, $"no disk {disk}")).Spec.Qos
            : (service.Model.Exports.FirstOrDefault(e => e.Spec.Name == export) ?? throw new ManagementException(RpcErrorCode.NotFound, $"no export {export}")).Spec.Qos;
        var next = current with
        {
            ReadIops = p.OptionalRate("iops_read") ?? current.ReadIops,
            WriteIops = p.OptionalRate("iops_write") ?? current.WriteIops,
            TotalIops = p.OptionalRate("iops_total") ?? current.TotalIops,
            ReadBytesPerSecond = p.OptionalRate("bps_read") ?? current.ReadBytesPerSecond,
            WriteBytesPerSecond = p.OptionalRate("bps_write") ?? current.WriteBytesPerSecond,
            TotalBytesPerSecond = p.OptionalRate("bps_total") ?? current.TotalBytesPerSecond,
            BurstMilliseconds = p.OptionalRate("burst_ms") is { } ms ? (ms <= 60_000 ? (uint)ms
                : throw new ManagementException(RpcErrorCode.InvalidParams, "burst_ms must be at most 60000")) : current.BurstMilliseconds,
        };
        p.RejectUnknown();
        service.SetQos(disk is not null, disk ?? export!, next);
        return new JsonObject { [disk is not null ? "disk" : "export"] = disk ?? export, ["qos"] = Qos(next) };
    }

    /// <summary>Limits as RPC results show them (0: unlimited).</summary>
    internal static JsonObject Qos(Vhost.Qos.QosLimits q) => new()
    {
        ["iops_read"] = q.ReadIops, ["iops_write"] = q.WriteIops, ["iops_total"] = q.TotalIops,
        ["bps_read"] = q.ReadBytesPerSecond, ["bps_write"] = q.WriteBytesPerSecond, ["bps_total"] = q.TotalBytesPerSecond,
        ["burst_ms"] = q.BurstMilliseconds,
    };

    private JsonNode ConfigSave(RpcParams p)
    {
        string? path = p.OptionalString("path");
        p.RejectUnknown();
        return new JsonObject { ["path"] = service.SaveConfig(path) };
    }

    private JsonNode Stats(RpcParams p)
    {
        string? export = p.OptionalString("export"), disk = p.OptionalString("disk");
        bool reset = p.Bool("reset", false), buckets = p.Bool("buckets", false);
        p.RejectUnknown();
        if (export is not null && disk is not null) throw new ManagementException(RpcErrorCode.InvalidParams, "give export or disk, not both");
        var baseline = service.StatsBaseline;
        // Each counter set is read once: what a reset returns and what the next call counts from are the same read.
        var toReset = !reset ? [] : service.Model.Exports.Where(e => export is null || e.Spec.Name == export).SelectMany(CounterSource.Of)
            .Where(s => disk is null || s.Disk == disk).Select(s => s.Counters).ToHashSet();
        var stats = TargetStats.Collect(service.Model, c => toReset.Contains(c) ? baseline.SinceAndReset(c) : baseline.Since(c), export, disk);
        return StatsJson.From(stats, buckets);
    }

    private JsonObject Describe(ManagedDisk d) => new()
    {
        ["name"] = d.Spec.Name,
        ["backend"] = d.Spec.Backend.ToSpec(),
        ["size_bytes"] = d.Backend.Info.SizeBytes,
        ["block_size"] = d.Spec.BlockSize,
        ["read_only"] = d.Spec.ReadOnly,
        ["shared"] = d.Spec.Shared,
        ["exports"] = new JsonArray(service.Model.Serialised(() => d.AttachedTo.ToArray()).Select(n => (JsonNode?)n).ToArray()),
        ["qos"] = Qos(d.Spec.Qos),
    };

    private JsonObject Describe(ManagedExport e)
    {
        int reactors = service.Model.Reactors.Reactors.Count;
        var o = new JsonObject
        {
            ["name"] = e.Spec.Name,
            ["kind"] = e.Spec.Kind,
            ["socket"] = e.Spec.Socket,
        };
        if (e.Spec.Kind == "scsi")
            o["luns"] = new JsonArray(e.Spec.Luns.Select(l => (JsonNode?)new JsonObject { ["target"] = l.Target, ["lun"] = l.Lun, ["disk"] = l.Disk }).ToArray());
        else
            o["disk"] = e.Spec.Disk;
        o["queues"] = e.Spec.Queues;
        o["qos"] = Qos(e.Spec.Qos);
        o["serial"] = e.Spec.EffectiveSerial;
        o["connected"] = e.Server.HasFrontend;
        o["sessions"] = e.Server.SessionsServed;
        o["queue_reactors"] = new JsonArray(Enumerable.Range(0, e.Device.QueueCount).Select(q => (JsonNode?)((e.ReactorOffset + q) % reactors)).ToArray());
        if (e.Server.SessionStatus() is { } session)
        {
            o["frontend"] = new JsonObject
            {
                ["features"] = $"0x{session.AckedFeatures:x}",
                ["feature_names"] = new JsonArray(FeatureNames.Virtio(session.AckedFeatures, e.Spec.Kind).Select(n => (JsonNode?)n).ToArray()),
                ["protocol_features"] = new JsonArray(FeatureNames.Protocol(session.AckedProtocolFeatures).Select(n => (JsonNode?)n).ToArray()),
                ["backend_channel"] = session.BackendChannel,
                ["queues"] = new JsonArray(session.Queues.Select(q => (JsonNode?)new JsonObject
                {
                    ["index"] = q.Index, ["size"] = q.Size, ["running"] = q.Running, ["reactor"] = q.Reactor, ["in_flight"] = q.InFlight,
                    ["broken"] = q.Broken,
                }).ToArray()),
                ["in_flight"] = session.Queues.Sum(q => q.InFlight),
            };
        }
        return o;
    }
}
