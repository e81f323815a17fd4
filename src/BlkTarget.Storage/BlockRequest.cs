namespace BlkTarget.Storage;

public enum BlockOperation : byte
{
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
}

/// <summary>Outcome of one block request, in the terms every device model can map to its own status codes.</summary>
public enum BlockStatus : byte
{
    Ok,
    IoError,
    Unsupported,
    /// <summary>The request lies outside the device or is not aligned to its block size.</summary>
    OutOfRange,
    /// <summary>A write-type request to a read-only device.</summary>
    ReadOnly,
    NoSpace,
}

[Flags]
public enum BlockRequestFlags : byte
{
    None = 0,
    /// <summary>Force unit access: the data is durable when the request completes.</summary>
    Fua = 1,
    /// <summary>Write-zeroes may deallocate the range instead of writing zeros.</summary>
    Unmap = 2,
}

/// <summary>
/// One request handed to a <see cref="IBlockChannel"/>. Offsets and lengths are in bytes; data moves through
/// <see cref="Iov"/> (which for virtio points straight into guest memory and must stay valid until completion;
/// the channel may change the iovec array itself, e.g. to resume a short transfer).
/// <see cref="Tag"/> comes back unchanged with the completion.
/// </summary>
public unsafe struct BlockRequest
{
    public BlockOperation Operation;
    public BlockRequestFlags Flags;
    public ulong Offset;
    public ulong Length;
    public IoVec* Iov;
    public int IovCount;
    public ulong Tag;
}
