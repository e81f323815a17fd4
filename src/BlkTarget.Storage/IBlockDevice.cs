namespace BlkTarget.Storage;

/// <summary>
/// What a backend can do; the device models derive their advertised features and limits from it.
/// <see cref="SupportsDiscard"/>: DISCARD may free space (a hint: the range's contents become undefined).
/// <see cref="SupportsWriteZeroes"/>: WRITE_ZEROES always leaves the range reading as zeros, with UNMAP possibly by
/// deallocating it.
/// </summary>
public sealed record BlockDeviceInfo(
    ulong SizeBytes,
    uint BlockSize,
    bool ReadOnly,
    bool SupportsDiscard,
    bool SupportsWriteZeroes,
    bool HasVolatileCache)
{
    public ulong BlockCount => SizeBytes / BlockSize;

    /// <summary>Longest range the medium discards in one request, in bytes (a multiple of <see cref="BlockSize"/>);
    /// 0: no limit of its own (the device model's applies). Longer ranges still work, they are split.</summary>
    public ulong MaxDiscardBytes { get; init; }

    /// <summary>The unit the medium deallocates in, in bytes (a multiple of <see cref="BlockSize"/>); 0: one block.
    /// Discarding less than a granule may free nothing.</summary>
    public uint DiscardGranularity { get; init; }

    /// <summary>Longest range the medium zeroes in one request, in bytes (a multiple of <see cref="BlockSize"/>);
    /// 0: no limit of its own.</summary>
    public ulong MaxWriteZeroesBytes { get; init; }

    /// <summary>WRITE_ZEROES with UNMAP may deallocate instead of writing zeros (thin backends; a block device with a
    /// write-zeroes command). False: every zero is written, so a device model must not turn a mere deallocation hint
    /// (SCSI UNMAP) into a write-zeroes, and must not tell the guest that write-zeroes may unmap.</summary>
    public bool ZeroesCanUnmap { get; init; } = true;
}

/// <summary>Receives completions; called on the thread that polls (or submits to) the channel.</summary>
public interface IBlockCompletionSink
{
    void Complete(ulong tag, BlockStatus status);

    /// <summary>
    /// The channel's completion handling threw (a bug, never guest input). From now on the channel calls
    /// <see cref="Complete"/> no more; its <see cref="IBlockChannel.InFlight"/> keeps counting the operations the
    /// kernel or a helper thread still holds (their buffers stay in use) and reaches 0 when all came back.
    /// Called on the reactor thread.
    /// </summary>
    void ChannelFaulted(Exception error);
}

/// <summary>
/// A block backend (SPDK's bdev): describes the device and opens one channel per reactor that uses it.
/// </summary>
public interface IBlockDevice : IDisposable
{
    /// <summary>What the device is now: a volatile read of an immutable description, replaced (never changed) when
    /// <see cref="Resize"/> grows the device. Channels read it per request, so they see a new size from their next
    /// request on.</summary>
    BlockDeviceInfo Info { get; }

    /// <summary>
    /// Grows the device online to <paramref name="newSizeBytes"/> (bytes, a multiple of the block size, larger than
    /// now): the medium is grown first, then the new <see cref="Info"/> is published. Called off the reactors (the
    /// management thread), at most one at a time per device.
    /// </summary>
    /// <exception cref="ArgumentException">not larger than now, not a multiple of the block size, or past what the
    /// medium allows.</exception>
    /// <exception cref="NotSupportedException">this backend cannot grow.</exception>
    /// <exception cref="IOException">the medium could not be grown (nothing changed).</exception>
    void Resize(ulong newSizeBytes) => throw new NotSupportedException("this kind of disk cannot be resized");

    /// <summary>
    /// Opens a channel on the calling reactor thread. The channel accepts up to <paramref name="maxInFlight"/>
    /// outstanding requests, does its asynchronous I/O through <paramref name="io"/> (the reactor's engine) and
    /// reports completions to <paramref name="sink"/>.
    /// </summary>
    IBlockChannel OpenChannel(IoContext io, IBlockCompletionSink sink, int maxInFlight);
}

/// <summary>
/// A device whose medium can grow from outside the target (another client resized a shared image). The device
/// publishes the new <see cref="IBlockDevice.Info"/> first, then raises <see cref="ExternallyResized"/> with the new size
/// in bytes, on a thread-pool thread (never a reactor), so that the exports tell their guests as after a resize RPC.
/// </summary>
public interface IExternalResizeSource
{
    event Action<ulong>? ExternallyResized;
}

/// <summary>
/// A per-thread I/O path into a device (SPDK's io_channel). Not thread-safe: only the owning reactor calls it.
/// A completion may be reported from inside <see cref="Submit"/> (synchronous backends) or later, when the
/// reactor polls its <see cref="IoContext"/> (asynchronous ones).
/// </summary>
public interface IBlockChannel : IDisposable
{
    /// <summary>Queues a request; never blocks. Range and read-only checks happen here too, so a bad request
    /// completes with an error status instead of reaching the medium.</summary>
    void Submit(in BlockRequest request);

    /// <summary>Requests submitted and not yet completed.</summary>
    int InFlight { get; }

    /// <summary>
    /// Stops the channel for good (its queue faulted or was abandoned): nothing new is issued for requests in
    /// flight (no next piece, no write after an allocation, no retry), nothing more is completed, and
    /// <see cref="InFlight"/> counts down as the kernel or a helper returns what it holds. Without this, work the
    /// guest no longer waits for could still reach the disk after the guest rewrote the same blocks. Channels that
    /// complete inline have nothing to stop.
    /// </summary>
    void Cancel() { }

    /// <summary>True when <see cref="PrefetchRead"/> does something (then device models may call it).</summary>
    bool PrefetchesReads => false;

    /// <summary>A hint that a read of <paramref name="length"/> bytes at byte <paramref name="offset"/> follows soon:
    /// a channel that copies from memory may start loading it into the cache. Nothing is checked or reported; an
    /// offset beyond the disk is ignored.</summary>
    void PrefetchRead(ulong offset, ulong length) { }
}
