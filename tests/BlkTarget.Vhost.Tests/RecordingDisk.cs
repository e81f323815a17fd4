using BlkTarget.Storage;
using BlkTarget.Storage.Ram;

namespace BlkTarget.Vhost.Tests;

/// <summary>A RAM disk that remembers the flags and iovecs of every read and write it was handed.</summary>
internal sealed unsafe class RecordingDisk(ulong size) : IBlockDevice
{
    private readonly RamDisk _inner = new(size);

    public List<(BlockOperation Operation, ulong Length, IoVec[] Iov, BlockRequestFlags Flags)> Requests { get; } = [];

    public BlockDeviceInfo Info => _inner.Info;

    public IBlockChannel OpenChannel(IoContext io, IBlockCompletionSink sink, int maxInFlight) =>
        new Channel(this, _inner.OpenChannel(io, sink, maxInFlight));

    public void Dispose() => _inner.Dispose();

    private sealed class Channel(RecordingDisk disk, IBlockChannel inner) : IBlockChannel
    {
        public int InFlight => inner.InFlight;

        public void Submit(in BlockRequest request)
        {
            if (request.Operation is BlockOperation.Read or BlockOperation.Write)
                disk.Requests.Add((request.Operation, request.Length, new ReadOnlySpan<IoVec>(request.Iov, request.IovCount).ToArray(), request.Flags));
            inner.Submit(request);
        }

        public void Dispose() => inner.Dispose();
    }
}
