using System.Globalization;

namespace BlkTarget.Storage.RawFile;

/// <summary>
/// The request-queue limits a block device publishes in sysfs that decide what an export of it may advertise, all in
/// bytes: <c>/sys/dev/block/MAJOR:MINOR/queue/</c>, or for a partition its whole disk's queue (a partition has none of
/// its own). <see cref="DiscardMaxBytes"/> 0: the device cannot discard. <see cref="WriteZeroesMaxBytes"/> 0: it has no
/// write-zeroes command (the kernel then zeroes by writing zero pages).
/// </summary>
internal readonly record struct BlockQueueLimits(ulong DiscardMaxBytes, uint DiscardGranularity, ulong WriteZeroesMaxBytes, uint LogicalBlockSize)
{
    /// <summary>
    /// Reads the limits of block device <paramref name="major"/>:<paramref name="minor"/> under <paramref name="sysfs"/>
    /// (the sysfs mount point); null when sysfs has no queue directory for it (not mounted, e.g. in some containers).
    /// Throws <see cref="IOException"/> when a limit file is missing or not a number.
    /// </summary>
    public static BlockQueueLimits? Read(uint major, uint minor, string sysfs = "/sys")
    {
        string link = Path.Combine(sysfs, "dev", "block", $"{major}:{minor}");
        if (!Directory.Exists(link)) return null;
        // A link to the device's directory under /sys/devices, resolved here: .NET would drop a "link/.." lexically.
        string device = Directory.ResolveLinkTarget(link, returnFinalTarget: true)?.FullName ?? link;
        string queue = File.Exists(Path.Combine(device, "partition"))
            ? Path.Combine(Path.GetDirectoryName(device)!, "queue")
            : Path.Combine(device, "queue");
        if (!Directory.Exists(queue)) return null;
        return new BlockQueueLimits(
            ReadNumber(queue, "discard_max_bytes"),
            (uint)ReadNumber(queue, "discard_granularity"),
            ReadNumber(queue, "write_zeroes_max_bytes"),
            (uint)ReadNumber(queue, "logical_block_size"));
    }

    /// <summary>
    /// The features and limits an export in <see cref="BlockDeviceInfo.BlockSize"/>-byte blocks may advertise, applied
    /// to <paramref name="info"/>. Nothing is advertised when the export's blocks are smaller than the device's logical
    /// blocks (the kernel would refuse every range). Discard needs the device's discard; write-zeroes is offered on every
    /// device: the kernel's zero-out (fallocate ZERO_RANGE, i.e. BLKZEROOUT) uses the device's write-zeroes command
    /// where it has one and otherwise writes zero pages itself, so the range reads as zeros either way, and the guest
    /// still saves sending the zeros (QEMU's file-posix offers write-zeroes on every block device too). Only a device with
    /// a write-zeroes command may deallocate while zeroing (<see cref="BlockDeviceInfo.ZeroesCanUnmap"/>).
    /// </summary>
    public BlockDeviceInfo ApplyTo(BlockDeviceInfo info)
    {
        uint blockSize = info.BlockSize;
        bool aligned = LogicalBlockSize != 0 && blockSize % LogicalBlockSize == 0;
        bool discard = aligned && DiscardMaxBytes >= blockSize;
        return info with
        {
            SupportsDiscard = discard,
            SupportsWriteZeroes = aligned,
            MaxDiscardBytes = discard ? DiscardMaxBytes / blockSize * blockSize : 0,
            DiscardGranularity = discard && DiscardGranularity > blockSize && DiscardGranularity % blockSize == 0 ? DiscardGranularity : 0,
            MaxWriteZeroesBytes = aligned && WriteZeroesMaxBytes >= blockSize ? WriteZeroesMaxBytes / blockSize * blockSize : 0,
            ZeroesCanUnmap = aligned && WriteZeroesMaxBytes >= blockSize,
        };
    }

    private static ulong ReadNumber(string queue, string name)
    {
        string path = Path.Combine(queue, name);
        string text;
        try
        {
            text = File.ReadAllText(path).Trim();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new IOException($"cannot read {path}: {e.Message}", e);
        }
        if (!ulong.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out ulong value))
            throw new IOException($"{path} holds '{text}', not a number");
        return value;
    }
}
