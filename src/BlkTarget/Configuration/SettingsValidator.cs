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
        if (settings.DrainTimeout < TimeSpan.FromSeconds(1) || settings.DrainTimeout > TimeSpan.FromHours(24))
            throw new ConfigurationException("drain timeout must be between 1 and 86400 seconds");
        var sockets = new HashSet<string>();
        var names = new HashSet<string>();
        foreach (var d in settings.Devices)
        {
            if (d.Kind is not ("blk" or "scsi")) throw new ConfigurationException($"device {d.Name}: kind '{d.Kind}' is not supported (supported: blk, scsi)");
            if (!names.Add(d.Name)) throw new ConfigurationException($"device name {d.Name} is used twice");
            if (!sockets.Add(Path.GetFullPath(d.Socket))) throw new ConfigurationException($"socket {d.Socket} is used by two devices");
            if (d.Kind == "scsi") ValidateScsi(d);
            else if (d.Luns.Count > 0) throw new ConfigurationException($"device {d.Name}: targets/LUNs apply only to kind scsi");
            if (d.Queues is < 1 or > MaxQueues) throw new ConfigurationException($"device {d.Name}: queues must be between 1 and {MaxQueues}, not {d.Queues}");
            if (d.BlockSize is not (512 or 4096)) throw new ConfigurationException($"device {d.Name}: block size must be 512 or 4096, not {d.BlockSize}");
            if (d.Kind == "blk" && d.CreateSize is not null && !d.Backend.CanCreate)
                throw new ConfigurationException($"device {d.Name}: --create only applies to file and image backends");
            if (d.Kind == "blk" && d.Backend.Kind == "ram" && d.Backend.SizeBytes % d.BlockSize != 0)
                throw new ConfigurationException($"device {d.Name}: size {d.Backend.SizeBytes} is not a multiple of the block size {d.BlockSize}");
            int maxSerial = d.Kind == "scsi" ? MaxScsiSerial : 20;
            if (d.Serial.Length > maxSerial || d.Serial.Any(c => c < 0x20 || c > 0x7e))
                throw new ConfigurationException($"device {d.Name}: serial must be at most {maxSerial} printable ASCII characters");
            string? directory = Path.GetDirectoryName(Path.GetFullPath(d.Socket));
            if (directory is not null && !Directory.Exists(directory))
                throw new ConfigurationException($"device {d.Name}: directory of socket {d.Socket} does not exist");
            if (System.Text.Encoding.UTF8.GetByteCount(Path.GetFullPath(d.Socket)) > 107)
                throw new ConfigurationException($"device {d.Name}: socket path {d.Socket} is longer than a Unix socket allows (107 bytes)");
        }
    }

    /// <summary>Most request queues of a SCSI device: QEMU adds a control and an event queue.</summary>
    public const int MaxScsiRequestQueues = MaxQueues - 2;
    public const int MaxScsiSerial = 64;

    private static void ValidateScsi(DeviceSettings d)
    {
        if (d.Queues is < 1 or > MaxScsiRequestQueues)
            throw new ConfigurationException($"device {d.Name}: a scsi device has 1 to {MaxScsiRequestQueues} request queues, not {d.Queues}");
        if (d.Luns.Count == 0) throw new ConfigurationException($"device {d.Name}: a scsi device needs at least one LUN");
        var seen = new HashSet<(int, int)>();
        foreach (var l in d.Luns)
        {
            string where = $"device {d.Name} target {l.Target} LUN {l.Lun}";
            if (l.Target is < 0 or > 255) throw new ConfigurationException($"device {d.Name}: target {l.Target} must be between 0 and 255");
            if (l.Lun is < 0 or > 16383) throw new ConfigurationException($"device {d.Name} target {l.Target}: LUN {l.Lun} must be between 0 and 16383");
            if (!seen.Add((l.Target, l.Lun))) throw new ConfigurationException($"{where}: defined twice");
            if (l.BlockSize is not (512 or 4096)) throw new ConfigurationException($"{where}: block size must be 512 or 4096, not {l.BlockSize}");
            if (l.CreateSize is not null && !l.Backend.CanCreate) throw new ConfigurationException($"{where}: 'create' only applies to file and image backends");
            if (l.Backend.Kind == "ram" && l.Backend.SizeBytes % l.BlockSize != 0)
                throw new ConfigurationException($"{where}: size {l.Backend.SizeBytes} is not a multiple of the block size {l.BlockSize}");
            if (l.Serial.Length > MaxScsiSerial || l.Serial.Any(c => c < 0x20 || c > 0x7e))
                throw new ConfigurationException($"{where}: serial must be at most {MaxScsiSerial} printable ASCII characters");
        }
        var files = d.Luns.Where(l => l.Backend.Medium is not null).GroupBy(l => l.Backend.Medium).FirstOrDefault(g => g.Count() > 1);
        if (files is not null) throw new ConfigurationException($"device {d.Name}: {files.Key} backs two LUNs");
    }
}
