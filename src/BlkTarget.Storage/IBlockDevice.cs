namespace BlkTarget.Storage;

/// <summary>What a backend can do; the device models derive their advertised features from it.</summary>
public sealed record BlockDeviceInfo(
    ulong SizeBytes,
    uint BlockSize,
    bool ReadOnly,
    bool SupportsDiscard,
    bool SupportsWriteZeroes,
    bool HasVolatileCache)
{
    public ulong BlockCount => SizeBytes / BlockSize;
}

/// <summary>Receives completions; called on the thread that polls (or submits to) the channel.</summary>
public interface IBlockCompletionSink
{
    void Complete(ulong tag, BlockStatus status);

    /// <summary>The channel's completion handling threw <paramref name="error"/> (on the reactor thread): the channel calls <see cref="Complete"/> no more, and its <see cref="IBlockChannel.InFlight"/> still counts down to 0 as the kernel returns the operations it holds.</summary>
    void ChannelFaulted(Exception error);
}

/// <summary>
/// A block backend (SPDK's bdev): describes the device and opens one channel per reactor that uses it.
/// </summary>
public interface IBlockDevice : IDisposable
{
    BlockDeviceInfo Info { get; }

    /// <summary>
    /// Opens a channel on the calling reactor thread. The channel accepts up to <paramref name="maxInFlight"/>
    /// outstanding requests, does its asynchronous I/O through <paramref name="io"/> (the reactor's engine) and
    /// reports completions to <paramref name="sink"/>.
    /// </summary>
    IBlockChannel OpenChannel(IoContext io, IBlockCompletionSink sink, int maxInFlight);
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
}
