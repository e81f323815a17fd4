using BlkTarget.Storage;
using BlkTarget.Storage.Ram;

namespace BlkTarget.Vhost.Tests;

/// <summary>
/// A RAM disk that remembers the iovecs of every read and write and the operation and flags of every request it was
/// handed. With <paramref name="shape"/> it describes itself as another medium would (no discard, limits, write-zeroes
/// that cannot unmap: a block device's shape), so a device model's choices can be checked; the data still lives in
/// the RAM disk, which accepts every operation.
/// </summary>
internal sealed unsafe class RecordingDisk(ulong size, Func<BlockDeviceInfo, BlockDeviceInfo>? shape = null) : IBlockDevice
{
    private readonly RamDisk _inner = new(size);

    public List<(BlockOperation Operation, ulong Length, IoVec[] Iov, BlockRequestFlags Flags)> Requests { get; } = [];

    public List<(BlockOperation Operation, BlockRequestFlags Flags)> Operations { get; } = [];

    /// <summary>With <see cref="Prefetching"/>: "prefetch LENGTH@OFFSET" and "read|write LENGTH@OFFSET" in call order.</summary>
    public List<string> Events { get; } = [];

    /// <summary>The channel offers <see cref="IBlockChannel.PrefetchRead"/> (and records the hints in <see cref="Events"/>).</summary>
    public bool Prefetching { get; init; }

    /// <summary>Called with each request before the disk runs it (a test may look at the ring meanwhile).</summary>
    public Action<BlockRequest>? BeforeSubmit { get; init; }

    public BlockDeviceInfo Info => shape is null ? _inner.Info : shape(_inner.Info);

    public IBlockChannel OpenChannel(IoContext io, IBlockCompletionSink sink, int maxInFlight) =>
        new Channel(this, _inner.OpenChannel(io, sink, maxInFlight));

    public void Dispose() => _inner.Dispose();

    private sealed class Channel(RecordingDisk disk, IBlockChannel inner) : IBlockChannel
    {
        public int InFlight => inner.InFlight;

        public void Submit(in BlockRequest request)
        {
            disk.BeforeSubmit?.Invoke(request);
            disk.Operations.Add((request.Operation, request.Flags));
            if (disk.Prefetching && request.Operation is BlockOperation.Read or BlockOperation.Write)
                disk.Events.Add($"{request.Operation.ToString().ToLowerInvariant()} {request.Length}@{request.Offset}");
            if (request.Operation is BlockOperation.Read or BlockOperation.Write)
                disk.Requests.Add((request.Operation, request.Length, new ReadOnlySpan<IoVec>(request.Iov, request.IovCount).ToArray(), request.Flags));
            inner.Submit(request);
        }

        public bool PrefetchesReads => disk.Prefetching;

        public void PrefetchRead(ulong offset, ulong length) => disk.Events.Add($"prefetch {length}@{offset}");

        public void Dispose() => inner.Dispose();
    }
}
