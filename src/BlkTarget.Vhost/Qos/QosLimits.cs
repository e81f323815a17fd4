namespace BlkTarget.Vhost.Qos;

/// <summary>
/// IOPS and bandwidth limits of one export or one disk, named after QEMU's throttle options (iops-read, iops-write,
/// iops-total, bps-read, bps-write, bps-total). 0 means unlimited. Only read and write requests are limited (as
/// in QEMU): flush, discard and write-zeroes pass without taking tokens, so a cap never delays durability.
/// </summary>
public sealed record QosLimits
{
    /// <summary>No limit at all.</summary>
    public static readonly QosLimits None = new();

    /// <summary>Read requests per second (iops-read).</summary>
    public ulong ReadIops { get; init; }
    /// <summary>Write requests per second (iops-write).</summary>
    public ulong WriteIops { get; init; }
    /// <summary>Read plus write requests per second (iops-total).</summary>
    public ulong TotalIops { get; init; }
    /// <summary>Bytes read per second (bps-read).</summary>
    public ulong ReadBytesPerSecond { get; init; }
    /// <summary>Bytes written per second (bps-write).</summary>
    public ulong WriteBytesPerSecond { get; init; }
    /// <summary>Bytes read plus written per second (bps-total).</summary>
    public ulong TotalBytesPerSecond { get; init; }
    /// <summary>Burst window in milliseconds: after an idle spell, every limit lets through this many milliseconds'
    /// worth of its rate at once (QEMU's iops-total-max = rate x this). 0: the default, one second's worth (SPDK and
    /// QEMU: a bucket holds one second of its rate).</summary>
    public uint BurstMilliseconds { get; init; }

    /// <summary>True when no rate is set.</summary>
    public bool IsUnlimited => ReadIops == 0 && WriteIops == 0 && TotalIops == 0
        && ReadBytesPerSecond == 0 && WriteBytesPerSecond == 0 && TotalBytesPerSecond == 0;

    /// <summary>The burst window actually used, in milliseconds.</summary>
    public uint EffectiveBurstMilliseconds => BurstMilliseconds == 0 ? 1000 : BurstMilliseconds;

    /// <summary>One line such as "iops-total=2000 bps-read=10485760", or "unlimited".</summary>
    public override string ToString()
    {
        if (IsUnlimited) return "unlimited";
        var parts = new List<string>();
        void Add(string name, ulong value) { if (value != 0) parts.Add($"{name}={value}"); }
        Add("iops-read", ReadIops);
        Add("iops-write", WriteIops);
        Add("iops-total", TotalIops);
        Add("bps-read", ReadBytesPerSecond);
        Add("bps-write", WriteBytesPerSecond);
        Add("bps-total", TotalBytesPerSecond);
        if (BurstMilliseconds != 0) parts.Add($"burst-ms={BurstMilliseconds}");
        return string.Join(" ", parts);
    }
}
