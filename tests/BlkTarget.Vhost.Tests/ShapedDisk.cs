using BlkTarget.Storage;
using BlkTarget.Storage.Ram;

namespace BlkTarget.Vhost.Tests;

/// <summary>
/// A RAM disk that describes itself as another medium would (no discard, limits, no unmapping write-zeroes: a block
/// device's shape) and remembers the operation and flags of every request it was handed, so a device model's choice
/// of request can be checked. The data still lives in the RAM disk, which accepts every operation.
/// </summary>
internal sealed class ShapedDisk(ulong size, Func<BlockDeviceInfo, BlockDeviceInfo> shape) : IBlockDevice
{
    private readonly RamDisk _inner = new(size);

    public List<(BlockOperation Operation, BlockRequestFlags Flags)> Requests { get; } = [];

    public BlockDeviceInfo Info => shape(_inner.Info);

    public IBlockChannel OpenChannel(IoContext io, IBlockCompletionSink sink, int maxInFlight) =>
        new Channel(this, _inner.OpenChannel(io, sink, maxInFlight));

    public void Dispose() => _inner.Dispose();

    private sealed class Channel(ShapedDisk disk, IBlockChannel inner) : IBlockChannel
    {
        public int InFlight => inner.InFlight;

        public void Submit(in BlockRequest request)
        {
            disk.Requests.Add((request.Operation, request.Flags));
            inner.Submit(request);
        }

        public void Dispose() => inner.Dispose();
    }
}
