namespace BlkTarget.Configuration;

/// <summary>Checks settings before anything is started, so a bad value is one clear error, not a crash later.</summary>
public static class SettingsValidator
{
    public const int MaxQueues = 256;

    public static void Validate(TargetSettings settings, int processorCount)
    {
        foreach (var cpu in settings.Cpus)
            if (cpu >= processorCount)
                throw new ConfigurationException($"cpu {cpu} is not available (this machine has CPUs 0-{processorCount - 1})");
        if (settings.IdlePoll < TimeSpan.Zero || settings.IdlePoll > TimeSpan.FromSeconds(1))
            throw new ConfigurationException("idle poll time must be between 0 and 1000000 microseconds");
        var sockets = new HashSet<string>();
        var names = new HashSet<string>();
        foreach (var d in settings.Devices)
        {
            if (d.Kind != "blk") throw new ConfigurationException($"device {d.Name}: kind '{d.Kind}' is not supported (supported: blk)");
            if (!names.Add(d.Name)) throw new ConfigurationException($"device name {d.Name} is used twice");
            if (!sockets.Add(Path.GetFullPath(d.Socket))) throw new ConfigurationException($"socket {d.Socket} is used by two devices");
            if (d.Queues is < 1 or > MaxQueues) throw new ConfigurationException($"device {d.Name}: queues must be between 1 and {MaxQueues}, not {d.Queues}");
            if (d.BlockSize is not (512 or 4096)) throw new ConfigurationException($"device {d.Name}: block size must be 512 or 4096, not {d.BlockSize}");
            if (d.CreateSize is not null && d.Backend.Kind == "ram")
                throw new ConfigurationException($"device {d.Name}: --create only applies to file and image backends");
            if (d.Backend.Kind == "ram" && d.Backend.SizeBytes % d.BlockSize != 0)
                throw new ConfigurationException($"device {d.Name}: size {d.Backend.SizeBytes} is not a multiple of the block size {d.BlockSize}");
            if (d.Serial.Length > 20 || d.Serial.Any(c => c < 0x20 || c > 0x7e))
                throw new ConfigurationException($"device {d.Name}: serial must be at most 20 printable ASCII characters");
            string? directory = Path.GetDirectoryName(Path.GetFullPath(d.Socket));
            if (directory is not null && !Directory.Exists(directory))
                throw new ConfigurationException($"device {d.Name}: directory of socket {d.Socket} does not exist");
            if (System.Text.Encoding.UTF8.GetByteCount(Path.GetFullPath(d.Socket)) > 107)
                throw new ConfigurationException($"device {d.Name}: socket path {d.Socket} is longer than a Unix socket allows (107 bytes)");
        }
    }
}
