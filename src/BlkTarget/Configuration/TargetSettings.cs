using BlkTarget.Management;

namespace BlkTarget.Configuration;

/// <summary>One LUN of a SCSI device: its address and the backend behind it.</summary>
public sealed record ScsiLunSettings
{
    public int Target { get; init; }
    public int Lun { get; init; }
    public required BackendSpec Backend { get; init; }
    public ulong? CreateSize { get; init; }
    public uint BlockSize { get; init; } = 512;
    public bool ReadOnly { get; init; }
    /// <summary>VPD page 80h serial; empty: derived from the device's serial.</summary>
    public string Serial { get; init; } = "";
    public bool WriteCache { get; init; } = true;
}

/// <summary>One export: a device kind, the socket it listens on and the backend behind it.</summary>
public sealed record DeviceSettings
{
    public required string Name { get; init; }
    public string Kind { get; init; } = "blk";
    public required string Socket { get; init; }
    /// <summary>The backend (for scsi devices: the first LUN's, see <see cref="Luns"/>).</summary>
    public required BackendSpec Backend { get; init; }
    /// <summary>Virtqueues for blk; request queues for scsi (which adds a control and an event queue).</summary>
    public int Queues { get; init; } = 1;
    public uint BlockSize { get; init; } = 512;
    public bool ReadOnly { get; init; }
    public string Serial { get; init; } = "";
    public bool WriteCache { get; init; } = true;
    /// <summary>For file backends: create the file with this size first (refused if it exists).</summary>
    public ulong? CreateSize { get; init; }
    /// <summary>Kind scsi: every LUN with its backend (at least one). Empty for blk.</summary>
    public IReadOnlyList<ScsiLunSettings> Luns { get; init; } = [];
}

/// <summary>Everything `blktarget serve` runs, whether it came from flags or from a config file.</summary>
public sealed record TargetSettings
{
    /// <summary>Devices in the original schema (each becomes disks and one export, see Management/ModelPlan).</summary>
    public required IReadOnlyList<DeviceSettings> Devices { get; init; }
    /// <summary>Disks in the model's schema, opened before any export.</summary>
    public IReadOnlyList<DiskSpec> Disks { get; init; } = [];
    /// <summary>Exports in the model's schema.</summary>
    public IReadOnlyList<ExportSpec> Exports { get; init; } = [];
    /// <summary>CPUs to pin one reactor each to; empty = unpinned reactors, one per queue up to half the CPUs.</summary>
    public IReadOnlyList<int> Cpus { get; init; } = [];
    /// <summary>How long a reactor keeps polling with nothing to do before it sleeps on the kick eventfds.</summary>
    public TimeSpan IdlePoll { get; init; } = TimeSpan.FromMicroseconds(200);
    /// <summary>How long stopping a queue waits for its in-flight requests before abandoning them (1 s to 24 h).</summary>
    public TimeSpan DrainTimeout { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>How long the data path runs on a private RAM disk at start, so a guest's first second runs on fully
    /// optimised code (<see cref="Hosting.DataPathWarmUp"/>); zero: no warm-up. `serve` turns it on.</summary>
    public TimeSpan DataPathWarmUp { get; init; }
    /// <summary>Who may connect to the exports' vhost-user sockets (a QEMU running as another user): null = as
    /// created (the process's umask).</summary>
    public SocketAccess? SocketAccess { get; init; }
}

/// <summary>Group and mode given to every export's socket after it is bound (config <c>socketGroup</c>,
/// <c>socketMode</c>; CLI <c>--socket-group</c>, <c>--socket-mode</c>). The management socket stays 0600.</summary>
public sealed record SocketAccess(string? Group, UnixFileMode? Mode)
{
    /// <summary>Parses an octal mode such as "0660" or "660" (permission bits only).</summary>
    public static bool TryParseMode(string text, out UnixFileMode mode)
    {
        mode = 0;
        string digits = text.StartsWith('0') && text.Length > 1 ? text[1..] : text;
        if (digits.Length is 0 or > 3 || digits.Any(c => c is < '0' or > '7')) return false;
        mode = (UnixFileMode)Convert.ToInt32(digits, 8);
        return true;
    }
}
