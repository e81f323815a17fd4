namespace BlkTarget.Storage;

/// <summary>What every backend's <see cref="IBlockDevice.Resize"/> checks first: disks only grow, in whole blocks.</summary>
public static class ResizeRules
{
    /// <exception cref="ArgumentException">read-only, not larger than now, or not a multiple of the block size.</exception>
    public static void CheckGrowth(BlockDeviceInfo info, ulong newSizeBytes)
    {
        if (info.ReadOnly) throw new ArgumentException("a read-only disk keeps its size");
        if (newSizeBytes <= info.SizeBytes)
            throw new ArgumentException($"disks only grow: {newSizeBytes} bytes is not more than the current {info.SizeBytes}");
        if (newSizeBytes % info.BlockSize != 0)
            throw new ArgumentException($"{newSizeBytes} bytes is not a multiple of the block size {info.BlockSize}");
        if (newSizeBytes > long.MaxValue) throw new ArgumentException($"{newSizeBytes} bytes is too large");
    }
}
