using System.Text.Json;
using System.Text.Json.Serialization;
using BlkTarget.Management;

namespace BlkTarget.Configuration;

/// <summary>
/// The JSON config file of `blktarget serve --config FILE` (comments and trailing commas allowed; unknown keys
/// are errors so a typo never silently falls back to a default). Documented in README.md and config/.
/// </summary>
public sealed partial class ConfigFile
{
    public sealed class DeviceEntry
    {
        public string? Name { get; set; }
        public string? Kind { get; set; }
        public string? Socket { get; set; }
        public string? Backend { get; set; }
        public int? Queues { get; set; }
        public uint? BlockSize { get; set; }
        public bool? ReadOnly { get; set; }
        public string? Serial { get; set; }
        public bool? WriteCache { get; set; }
        /// <summary>File backends: create the file with this size (e.g. "10G") if it does not exist yet.</summary>
        public string? Create { get; set; }
        /// <summary>Kind scsi: the targets and their LUNs (instead of one 'backend').</summary>
        public List<TargetEntry>? Targets { get; set; }
    }

    public sealed class TargetEntry
    {
        public int? Target { get; set; }
        public List<LunEntry>? Luns { get; set; }
    }

    public sealed class LunEntry
    {
        public int? Lun { get; set; }
        public string? Backend { get; set; }
        public string? Create { get; set; }
        public uint? BlockSize { get; set; }
        public bool? ReadOnly { get; set; }
        public string? Serial { get; set; }
        public bool? WriteCache { get; set; }
    }

    /// <summary>A named disk (the model's schema; see Management/DiskSpec).</summary>
    public sealed class DiskEntry
    {
        public string? Name { get; set; }
        public string? Backend { get; set; }
        public string? Create { get; set; }
        public uint? BlockSize { get; set; }
        public bool? ReadOnly { get; set; }
        public bool? Shared { get; set; }
        /// <summary>Limits shared by every export of the disk.</summary>
        public QosEntry? Qos { get; set; }
    }

    /// <summary>QoS limits (QEMU's throttle names in camelCase); 0 or absent: unlimited. Per second; bps in bytes
    /// (a number, or a string such as "10M").</summary>
    public sealed class QosEntry
    {
        public ulong? IopsRead { get; set; }
        public ulong? IopsWrite { get; set; }
        public ulong? IopsTotal { get; set; }
        public JsonElement? BpsRead { get; set; }
        public JsonElement? BpsWrite { get; set; }
        public JsonElement? BpsTotal { get; set; }
        /// <summary>Burst window in milliseconds (default: one second's worth of every rate).</summary>
        public uint? BurstMs { get; set; }

        internal Vhost.Qos.QosLimits ToLimits(string where)
        {
            if (BurstMs > 60_000) throw new ConfigurationException($"{where}.qos: burstMs must be at most 60000");
            return new Vhost.Qos.QosLimits
            {
                ReadIops = IopsRead ?? 0, WriteIops = IopsWrite ?? 0, TotalIops = IopsTotal ?? 0,
                ReadBytesPerSecond = Bytes(BpsRead, "bpsRead", where), WriteBytesPerSecond = Bytes(BpsWrite, "bpsWrite", where),
                TotalBytesPerSecond = Bytes(BpsTotal, "bpsTotal", where), BurstMilliseconds = BurstMs ?? 0,
            };
        }

        private static ulong Bytes(JsonElement? value, string name, string where) => value switch
        {
            null => 0,
            { ValueKind: JsonValueKind.Number } v when v.TryGetUInt64(out ulong n) => n,
            { ValueKind: JsonValueKind.String } v when SizeParser.TryParse(v.GetString()!, out ulong n) => n,
            _ => throw new ConfigurationException($"{where}.qos: {name} must be bytes per second, a number or a string such as 10M"),
        };

        /// <summary>The entry for <paramref name="limits"/>, or null when there are none (nothing is written).</summary>
        internal static QosEntry? From(Vhost.Qos.QosLimits limits) => limits.IsUnlimited ? null : new QosEntry
        {
            IopsRead = Nz(limits.ReadIops), IopsWrite = Nz(limits.WriteIops), IopsTotal = Nz(limits.TotalIops),
            BpsRead = Num(limits.ReadBytesPerSecond), BpsWrite = Num(limits.WriteBytesPerSecond), BpsTotal = Num(limits.TotalBytesPerSecond),
            BurstMs = limits.BurstMilliseconds == 0 ? null : limits.BurstMilliseconds,
        };

        private static ulong? Nz(ulong v) => v == 0 ? null : v;
        private static JsonElement? Num(ulong v) => v == 0 ? null : JsonSerializer.SerializeToElement(v);
    }

    /// <summary>An export naming its disk(s) (the model's schema; see Management/ExportSpec).</summary>
    public sealed class ExportEntry
    {
        public string? Name { get; set; }
        public string? Kind { get; set; }
        public string? Socket { get; set; }
        public string? Disk { get; set; }
        public int? Queues { get; set; }
        public string? Serial { get; set; }
        public bool? WriteCache { get; set; }
        public List<ExportLunEntry>? Luns { get; set; }
        /// <summary>Limits shared by all the export's queues.</summary>
        public QosEntry? Qos { get; set; }
    }

    public sealed class ExportLunEntry
    {
        public int? Target { get; set; }
        public int? Lun { get; set; }
        public string? Disk { get; set; }
        public string? Serial { get; set; }
        public bool? WriteCache { get; set; }
    }

    public string? Cpus { get; set; }
    public int? IdlePollMicroseconds { get; set; }
    public int? DrainTimeoutSeconds { get; set; }
    /// <summary>Group of the exports' sockets (a name from /etc/group, or a number).</summary>
    public string? SocketGroup { get; set; }
    /// <summary>Mode of the exports' sockets, octal ("0660").</summary>
    public string? SocketMode { get; set; }
    public List<DeviceEntry>? Devices { get; set; }
    public List<DiskEntry>? Disks { get; set; }
    public List<ExportEntry>? Exports { get; set; }

    internal static readonly JsonSerializerOptions Options = new()
    {
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        WriteIndented = true,
        ReadCommentHandling = JsonCommentHandling.Skip,
        AllowTrailingCommas = true,
        PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
    };

    /// <summary>Reads and converts a config file; throws <see cref="ConfigurationException"/> with one clear line.</summary>
    public static TargetSettings Load(string path)
    {
        string text;
        try
        {
            text = File.ReadAllText(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ConfigurationException($"cannot read config file {path}: {e.Message}");
        }
        ConfigFile? file;
        try
        {
            file = JsonSerializer.Deserialize<ConfigFile>(text, Options);
        }
        catch (JsonException e)
        {
            throw new ConfigurationException($"config file {path}: {e.Message}");
        }
        if (file is null) throw new ConfigurationException($"config file {path}: empty (write {{}} for a target without disks)");
        return file.ToSettings(path);
    }

    private static ulong? ParseCreate(string? text, string where)
    {
        if (text is null) return null;
        if (!SizeParser.TryParse(text, out ulong parsed) || parsed == 0) throw new ConfigurationException($"{where}: 'create' must be a size such as 10G");
        return parsed;
    }

    private TargetSettings ToSettings(string path)
    {
        var devices = new List<DeviceSettings>();
        for (int i = 0; i < (Devices?.Count ?? 0); i++)
        {
            var d = Devices![i];
            string where = $"config file {path}: devices[{i}]";
            if (string.IsNullOrWhiteSpace(d.Socket)) throw new ConfigurationException($"{where}: 'socket' is required");
            string kind = d.Kind ?? "blk";
            string name = d.Name ?? $"dev{i}";
            ulong? createSize = ParseCreate(d.Create, where);
            var luns = new List<ScsiLunSettings>();
            BackendSpec? backend = null;
            if (d.Targets is not null)
            {
                if (kind != "scsi") throw new ConfigurationException($"{where}: 'targets' applies only to kind scsi");
                if (d.Backend is not null || d.Create is not null)
                    throw new ConfigurationException($"{where}: give either 'backend' (one LUN) or 'targets', not both");
                if (d.Targets.Count == 0) throw new ConfigurationException($"{where}: 'targets' is empty");
                for (int t = 0; t < d.Targets.Count; t++)
                {
                    var target = d.Targets[t];
                    string at = $"{where}.targets[{t}]";
                    if (target.Target is not int targetId) throw new ConfigurationException($"{at}: 'target' is required");
                    if (target.Luns is not { Count: > 0 }) throw new ConfigurationException($"{at}: 'luns' is required and must not be empty");
                    for (int l = 0; l < target.Luns.Count; l++)
                    {
                        var lun = target.Luns[l];
                        string lat = $"{at}.luns[{l}]";
                        if (lun.Lun is not int lunId) throw new ConfigurationException($"{lat}: 'lun' is required");
                        if (string.IsNullOrWhiteSpace(lun.Backend)) throw new ConfigurationException($"{lat}: 'backend' is required");
                        if (!BackendSpec.TryParse(lun.Backend, out var lunBackend, out var lunError)) throw new ConfigurationException($"{lat}: {lunError}");
                        luns.Add(new ScsiLunSettings
                        {
                            Target = targetId,
                            Lun = lunId,
                            Backend = lunBackend!,
                            CreateSize = ParseCreate(lun.Create, lat),
                            BlockSize = lun.BlockSize ?? d.BlockSize ?? 512,
                            ReadOnly = lun.ReadOnly ?? d.ReadOnly ?? false,
                            Serial = lun.Serial ?? "",
                            WriteCache = lun.WriteCache ?? d.WriteCache ?? true,
                        });
                    }
                }
                backend = luns[0].Backend;
            }
            else
            {
                if (string.IsNullOrWhiteSpace(d.Backend)) throw new ConfigurationException($"{where}: 'backend' is required{(kind == "scsi" ? " (or 'targets')" : "")}");
                if (!BackendSpec.TryParse(d.Backend, out backend, out var error)) throw new ConfigurationException($"{where}: {error}");
                if (kind == "scsi")
                    luns.Add(new ScsiLunSettings
                    {
                        Backend = backend!,
                        CreateSize = createSize,
                        BlockSize = d.BlockSize ?? 512,
                        ReadOnly = d.ReadOnly ?? false,
                        WriteCache = d.WriteCache ?? true,
                    });
            }
            devices.Add(new DeviceSettings
            {
                Name = name,
                Kind = kind,
                Socket = d.Socket,
                Backend = backend!,
                Queues = d.Queues ?? 1,
                BlockSize = d.BlockSize ?? 512,
                ReadOnly = d.ReadOnly ?? false,
                Serial = d.Serial ?? name,
                WriteCache = d.WriteCache ?? true,
                CreateSize = createSize,
                Luns = luns,
            });
        }
        var cpus = new List<int>();
        if (Cpus is not null && !CpuListParser.TryParse(Cpus, out cpus, out var cpuError))
            throw new ConfigurationException($"config file {path}: cpus: {cpuError}");
        UnixFileMode? socketMode = null;
        if (SocketMode is not null)
        {
            if (!SocketAccess.TryParseMode(SocketMode, out var mode)) throw new ConfigurationException($"config file {path}: socketMode: '{SocketMode}' is not an octal mode such as 0660");
            socketMode = mode;
        }
        return new TargetSettings
        {
            Devices = devices,
            Disks = (Disks ?? []).Select((d, i) => ToDisk(d, $"config file {path}: disks[{i}]")).ToList(),
            Exports = (Exports ?? []).Select((e, i) => ToExport(e, $"config file {path}: exports[{i}]")).ToList(),
            Cpus = cpus,
            IdlePoll = IdlePollMicroseconds is int us ? TimeSpan.FromMicroseconds(us) : new TargetSettings { Devices = [] }.IdlePoll,
            DrainTimeout = DrainTimeoutSeconds is int s ? TimeSpan.FromSeconds(s) : new TargetSettings { Devices = [] }.DrainTimeout,
            SocketAccess = SocketGroup is null && socketMode is null ? null : new SocketAccess(SocketGroup, socketMode),
        };
    }
}

public sealed partial class ConfigFile
{
    private static DiskSpec ToDisk(DiskEntry d, string where)
    {
        if (string.IsNullOrWhiteSpace(d.Name)) throw new ConfigurationException($"{where}: 'name' is required");
        if (string.IsNullOrWhiteSpace(d.Backend)) throw new ConfigurationException($"{where}: 'backend' is required");
        if (!BackendSpec.TryParse(d.Backend, out var backend, out var error)) throw new ConfigurationException($"{where}: {error}");
        return new DiskSpec
        {
            Name = d.Name,
            Backend = backend!,
            CreateSize = ParseCreate(d.Create, where),
            BlockSize = d.BlockSize ?? 512,
            ReadOnly = d.ReadOnly ?? false,
            Shared = d.Shared ?? false,
            Qos = d.Qos?.ToLimits(where) ?? Vhost.Qos.QosLimits.None,
        };
    }

    private static ExportSpec ToExport(ExportEntry e, string where)
    {
        if (string.IsNullOrWhiteSpace(e.Name)) throw new ConfigurationException($"{where}: 'name' is required");
        if (string.IsNullOrWhiteSpace(e.Socket)) throw new ConfigurationException($"{where}: 'socket' is required");
        string kind = e.Kind ?? "blk";
        if (kind == "blk" && string.IsNullOrWhiteSpace(e.Disk)) throw new ConfigurationException($"{where}: 'disk' is required");
        if (kind == "scsi" && e.Disk is not null) throw new ConfigurationException($"{where}: a scsi export lists 'luns', not 'disk'");
        if (kind == "blk" && e.Luns is not null) throw new ConfigurationException($"{where}: 'luns' applies only to kind scsi");
        var luns = new List<ScsiLunSpec>();
        for (int i = 0; i < (e.Luns?.Count ?? 0); i++)
        {
            var l = e.Luns![i];
            if (string.IsNullOrWhiteSpace(l.Disk)) throw new ConfigurationException($"{where}.luns[{i}]: 'disk' is required");
            luns.Add(new ScsiLunSpec { Target = l.Target ?? 0, Lun = l.Lun ?? 0, Disk = l.Disk, Serial = l.Serial ?? "", WriteCache = l.WriteCache ?? true });
        }
        return new ExportSpec
        {
            Name = e.Name,
            Kind = kind,
            Socket = e.Socket,
            Disk = e.Disk,
            Queues = e.Queues ?? 1,
            Serial = e.Serial ?? "",
            WriteCache = e.WriteCache ?? true,
            Luns = luns,
            Qos = e.Qos?.ToLimits(where) ?? Vhost.Qos.QosLimits.None,
        };
    }
}

/// <summary>A configuration problem, reported to the user as one line.</summary>
public sealed class ConfigurationException(string message) : Exception(message);
