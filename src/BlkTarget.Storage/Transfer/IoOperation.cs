namespace BlkTarget.Storage.Transfer;

/// <summary>What an operation is waiting for; decides how its next completion is handled.</summary>
internal enum IoStep : byte
{
    /// <summary>Nothing outstanding: the slot is being worked on right now.</summary>
    None,
    /// <summary>A READV/WRITEV of one piece (<see cref="IoOperation.PieceLength"/> bytes at <see cref="IoOperation.PieceFileOffset"/>).</summary>
    Data,
    /// <summary>An fsync for a FLUSH request.</summary>
    Flush,
    /// <summary>An fsync that makes a write-through (FUA) write's metadata durable before it completes.</summary>
    WriteThroughSync,
    /// <summary>A fallocate (discard / write-zeroes of a raw file, write-zeroes of a block device).</summary>
    Fallocate,
    /// <summary>A block device's discard through the ring (<see cref="IoOperation.PieceLength"/> bytes at
    /// <see cref="IoOperation.PieceFileOffset"/>).</summary>
    BlockDiscard,
    /// <summary>Work a helper thread does for the channel (image cluster allocation and deallocation).</summary>
    Helper,
    /// <summary>Parked in the channel until something it depends on is released (a cluster range).</summary>
    Parked,
}

/// <summary>
/// The state of one request in a channel's preallocated slot: where the transfer stands, the piece in flight,
/// and what the slot waits for. Lives on the pinned heap (a bounce iovec's address is handed to the kernel).
/// </summary>
internal struct IoOperation
{
    public ulong Tag;
    /// <summary>The slot holds a request (false once it is finished or released).</summary>
    public bool InUse;
    public BlockOperation Kind;
    public BlockRequestFlags Flags;
    public IoStep Step;
    /// <summary>An SQE, helper job or SQE wait is outstanding: the slot is released by its completion.</summary>
    public bool Outstanding;
    public TransferCursor Cursor;
    public BounceBuffer Bounce;
    /// <summary>File offset and length of the piece in flight, and the iovec trimmed to end it (restored on completion).</summary>
    public ulong PieceFileOffset;
    public ulong PieceLength;
    public int TrimmedIndex;
    public nuint TrimmedLength;
    public int PieceIovCount;
    /// <summary>fallocate mode of a discard / write-zeroes (raw files).</summary>
    public int FallocateMode;
    /// <summary>Token of the sync in flight, for the test recorder (<see cref="IMediumRecorder"/>).</summary>
    public long SyncToken;
    /// <summary>Backend-specific: e.g. the image's metadata version a flush covers.</summary>
    public long Version;
    /// <summary>Backend-specific: e.g. the cluster range an image request holds.</summary>
    public ulong RangeFirst;
    public ulong RangeLast;
    public bool HoldsRange;
    public int RangeEpoch;
}
