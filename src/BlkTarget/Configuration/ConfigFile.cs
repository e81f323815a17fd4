using System.Text.Json;
using System.Text.Json.Serialization;

namespace BlkTarget.Configuration;

/// <summary>
/// The JSON config file of `blktarget serve --config FILE` (comments and trailing commas allowed; unknown keys
/// are errors so a typo never silently falls back to a default). Documented in README.md and config/.
/// </summary>
public sealed class ConfigFile
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

    public string? Cpus { get; set; }
    public int? IdlePollMicroseconds { get; set; }
    public int? DrainTimeoutSeconds { get; set; }
    public List<DeviceEntry>? Devices { get; set; }

    private static readonly JsonSerializerOptions Options = new()
    {
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
        if (file?.Devices is not { Count: > 0 }) throw new ConfigurationException($"config file {path}: no devices");
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
        for (int i = 0; i < Devices!.Count; i++)
        {
            var d = Devices[i];
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
        return new TargetSettings
        {
            Devices = devices,
            Cpus = cpus,
            IdlePoll = IdlePollMicroseconds is int us ? TimeSpan.FromMicroseconds(us) : new TargetSettings { Devices = [] }.IdlePoll,
            DrainTimeout = DrainTimeoutSeconds is int s ? TimeSpan.FromSeconds(s) : new TargetSettings { Devices = [] }.DrainTimeout,
        };
    }
}

/// <summary>A configuration problem, reported to the user as one line.</summary>
public sealed class ConfigurationException(string message) : Exception(message);
