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
    }

    public string? Cpus { get; set; }
    public int? IdlePollMicroseconds { get; set; }
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

    private TargetSettings ToSettings(string path)
    {
        var devices = new List<DeviceSettings>();
        for (int i = 0; i < Devices!.Count; i++)
        {
            var d = Devices[i];
            string where = $"config file {path}: devices[{i}]";
            if (string.IsNullOrWhiteSpace(d.Socket)) throw new ConfigurationException($"{where}: 'socket' is required");
            if (string.IsNullOrWhiteSpace(d.Backend)) throw new ConfigurationException($"{where}: 'backend' is required");
            if (!BackendSpec.TryParse(d.Backend, out var backend, out var error)) throw new ConfigurationException($"{where}: {error}");
            string name = d.Name ?? $"dev{i}";
            ulong? createSize = null;
            if (d.Create is not null)
            {
                if (!SizeParser.TryParse(d.Create, out ulong parsed) || parsed == 0) throw new ConfigurationException($"{where}: 'create' must be a size such as 10G");
                createSize = parsed;
            }
            devices.Add(new DeviceSettings
            {
                Name = name,
                Kind = d.Kind ?? "blk",
                Socket = d.Socket,
                Backend = backend!,
                Queues = d.Queues ?? 1,
                BlockSize = d.BlockSize ?? 512,
                ReadOnly = d.ReadOnly ?? false,
                Serial = d.Serial ?? name,
                WriteCache = d.WriteCache ?? true,
                CreateSize = createSize,
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
        };
    }
}

/// <summary>A configuration problem, reported to the user as one line.</summary>
public sealed class ConfigurationException(string message) : Exception(message);
