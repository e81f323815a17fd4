namespace BlkTarget.Storage;

/// <summary>Checks every backend applies before touching its medium.</summary>
public static class RequestValidation
{
    /// <summary>Ok when the request fits the device: inside its size (overflow-safe), block-aligned, and not a
    /// write to a read-only device.</summary>
    public static BlockStatus Check(in BlockRequest request, BlockDeviceInfo info)
    {
        bool modifies = request.Operation is BlockOperation.Write or BlockOperation.Discard or BlockOperation.WriteZeroes;
        if (modifies && info.ReadOnly) return BlockStatus.ReadOnly;
        if (request.Operation == BlockOperation.Flush) return BlockStatus.Ok;
        if (request.Operation == BlockOperation.Discard && !info.SupportsDiscard) return BlockStatus.Unsupported;
        if (request.Operation == BlockOperation.WriteZeroes && !info.SupportsWriteZeroes) return BlockStatus.Unsupported;
        if (request.Offset % info.BlockSize != 0 || request.Length % info.BlockSize != 0) return BlockStatus.OutOfRange;
        if (request.Offset > info.SizeBytes || request.Length > info.SizeBytes - request.Offset) return BlockStatus.OutOfRange;
        return BlockStatus.Ok;
    }

    /// <summary>Total bytes described by an iovec array.</summary>
    public static unsafe ulong IovBytes(IoVec* iov, int count)
    {
        ulong total = 0;
        for (int i = 0; i < count; i++) total += iov[i].Length;
        return total;
    }
}
