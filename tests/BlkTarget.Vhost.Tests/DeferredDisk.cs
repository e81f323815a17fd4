using BlkTarget.Storage;
using BlkTarget.Storage.Ram;

namespace BlkTarget.Vhost.Tests;

/// <summary>
/// A RAM disk whose completions wait until the test releases them, like an asynchronous backend with I/O in
/// flight. Lets tests observe in-flight behaviour (drain on stop, head reuse).
/// </summary>
internal sealed class DeferredDisk(ulong size) : IBlockDevice
{
    private readonly RamDisk _inner = new(size);
    private readonly List<DeferredChannel> _channels = [];

    public BlockDeviceInfo Info => _inner.Info;

    public IBlockChannel OpenChannel(IoContext io, IBlockCompletionSink sink, int maxInFlight)
    {
        var held = new HeldCompletions();
        var channel = new DeferredChannel(_inner.OpenChannel(io, held, maxInFlight), held, sink);
        _channels.Add(channel);
        return channel;
    }

    /// <summary>Delivers every completion held back so far.</summary>
    public void ReleaseCompletions()
    {
        foreach (var channel in _channels) channel.Release();
    }

    public void Dispose() => _inner.Dispose();

    /// <summary>Where the inner RAM channel's inline completions wait.</summary>
    private sealed class HeldCompletions : IBlockCompletionSink
    {
        public readonly Queue<(ulong Tag, BlockStatus Status)> Items = new();
        public void Complete(ulong tag, BlockStatus status) => Items.Enqueue((tag, status));
        public void ChannelFaulted(Exception error) => throw new InvalidOperationException("the RAM channel never faults", error);
    }

    private sealed class DeferredChannel(IBlockChannel inner, HeldCompletions held, IBlockCompletionSink sink) : IBlockChannel
    {
        public int InFlight => held.Items.Count;

        public void Submit(in BlockRequest request) => inner.Submit(request);

        public void Release()
        {
            while (held.Items.TryDequeue(out var c)) sink.Complete(c.Tag, c.Status);
        }

        public void Dispose() => inner.Dispose();
    }
}
