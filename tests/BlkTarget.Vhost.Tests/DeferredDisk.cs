using BlkTarget.Storage;
using BlkTarget.Storage.Ram;

namespace BlkTarget.Vhost.Tests;

/// <summary>
/// A RAM disk whose completions wait until the test releases them, like an asynchronous backend with I/O in
/// flight. Lets tests observe in-flight behaviour (drain on stop, head reuse, a backend that never finishes).
/// Completions are delivered the way the reactor's I/O engine does: when the sink throws while completing one,
/// the channel is faulted (<see cref="IBlockCompletionSink.ChannelFaulted"/>), calls Complete no more, and its
/// operations still count down as the test releases them. Not thread-safe: call it on the thread that owns the
/// channels (the reactor's, through Invoke, when a reactor runs them).
/// </summary>
internal sealed class DeferredDisk(ulong size) : IBlockDevice
{
    private readonly RamDisk _inner = new(size);
    private readonly List<DeferredChannel> _channels = [];

    public BlockDeviceInfo Info => _inner.Info;

    /// <summary>Operations held back, over all channels.</summary>
    public int Held => _channels.Sum(c => c.InFlight);

    /// <summary>Channels opened and not disposed yet.</summary>
    public int OpenChannels => _channels.Count(c => !c.Disposed);

    /// <summary>When set, Submit throws: a backend bug inside the queue's own processing.</summary>
    public bool ThrowOnSubmit { get; set; }

    public IBlockChannel OpenChannel(IoContext io, IBlockCompletionSink sink, int maxInFlight)
    {
        var held = new HeldCompletions();
        var channel = new DeferredChannel(this, _inner.OpenChannel(io, held, maxInFlight), held, sink);
        _channels.Add(channel);
        return channel;
    }

    /// <summary>Delivers every completion held back so far.</summary>
    public void ReleaseCompletions()
    {
        foreach (var channel in _channels) channel.Release(int.MaxValue, wrongTag: null);
    }

    /// <summary>Delivers the oldest held completion with <paramref name="tag"/> instead of its own: a backend bug.</summary>
    public void ReleaseOneWithTag(ulong tag)
    {
        foreach (var channel in _channels)
            if (channel.InFlight > 0)
            {
                channel.Release(1, tag);
                return;
            }
    }

    public void Dispose() => _inner.Dispose();

    /// <summary>Where the inner RAM channel's inline completions wait.</summary>
    private sealed class HeldCompletions : IBlockCompletionSink
    {
        public readonly Queue<(ulong Tag, BlockStatus Status)> Items = new();
        public void Complete(ulong tag, BlockStatus status) => Items.Enqueue((tag, status));
        public void ChannelFaulted(Exception error) => throw new InvalidOperationException("a RAM channel completes inline and never faults", error);
    }

    private sealed class DeferredChannel(DeferredDisk disk, IBlockChannel inner, HeldCompletions held, IBlockCompletionSink sink) : IBlockChannel
    {
        private bool _faulted;

        public int InFlight => held.Items.Count;
        public bool Disposed { get; private set; }

        public void Submit(in BlockRequest request)
        {
            if (disk.ThrowOnSubmit) throw new InvalidOperationException("injected submit bug");
            inner.Submit(request);
        }

        public void Release(int count, ulong? wrongTag)
        {
            for (int i = 0; i < count && held.Items.TryDequeue(out var c); i++)
            {
                if (_faulted) continue;
                try
                {
                    sink.Complete(wrongTag ?? c.Tag, c.Status);
                }
                catch (Exception e)
                {
                    _faulted = true;
                    sink.ChannelFaulted(e);
                }
            }
        }

        public void Dispose()
        {
            Disposed = true;
            inner.Dispose();
        }
    }
}
