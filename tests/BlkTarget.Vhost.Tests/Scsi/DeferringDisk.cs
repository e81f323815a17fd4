using BlkTarget.Storage;
using BlkTarget.Storage.Ram;

namespace BlkTarget.Vhost.Tests.Scsi;

/// <summary>A RAM disk whose requests complete only when <see cref="CompleteOne"/> is called, the way an io_uring
/// backend completes them on a later poll; records each request's length and iovec count.</summary>
internal sealed class DeferringDisk(ulong size, uint blockSize = 512) : IBlockDevice
{
    private readonly RamDisk _inner = new(size, blockSize);
    private readonly Queue<(IBlockChannel Channel, BlockRequest Request)> _held = new();

    public List<(BlockOperation Operation, ulong Offset, ulong Length, int IovCount)> Requests { get; } = [];

    public BlockDeviceInfo Info => _inner.Info;

    public int MaxHeld { get; private set; }

    public IBlockChannel OpenChannel(IoContext io, IBlockCompletionSink sink, int maxInFlight) =>
        new Channel(this, _inner.OpenChannel(io, sink, maxInFlight));

    public bool CompleteOne()
    {
        if (!_held.TryDequeue(out var held)) return false;
        held.Channel.Submit(held.Request);
        return true;
    }

    public void Dispose() => _inner.Dispose();

    private sealed class Channel(DeferringDisk disk, IBlockChannel inner) : IBlockChannel
    {
        public int InFlight => inner.InFlight + disk._held.Count;

        public void Submit(in BlockRequest request)
        {
            disk.Requests.Add((request.Operation, request.Offset, request.Length, request.IovCount));
            disk._held.Enqueue((inner, request));
            disk.MaxHeld = Math.Max(disk.MaxHeld, disk._held.Count);
        }

        public void Dispose() => inner.Dispose();
    }
}
