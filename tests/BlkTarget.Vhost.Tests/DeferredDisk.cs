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
    private DeferredChannel? _channel;

    public BlockDeviceInfo Info => _inner.Info;
    public bool Release { get; set; }

    public IBlockChannel OpenChannel(IBlockCompletionSink sink, int maxInFlight) => _channel = new DeferredChannel(this, _inner, sink);

    public void Dispose() => _inner.Dispose();

    private sealed class DeferredChannel : IBlockChannel, IBlockCompletionSink
    {
        private readonly DeferredDisk _owner;
        private readonly IBlockChannel _inner;
        private readonly IBlockCompletionSink _sink;
        private readonly Queue<(ulong, BlockStatus)> _done = new();

        public DeferredChannel(DeferredDisk owner, RamDisk inner, IBlockCompletionSink sink)
        {
            _owner = owner;
            _sink = sink;
            _inner = inner.OpenChannel(this, 64);
        }

        public int InFlight => _done.Count;
        public void Submit(in BlockRequest request) => _inner.Submit(request);
        public void Complete(ulong tag, BlockStatus status) => _done.Enqueue((tag, status));

        public int Poll()
        {
            if (!_owner.Release) return 0;
            int n = 0;
            while (_done.TryDequeue(out var c))
            {
                _sink.Complete(c.Item1, c.Item2);
                n++;
            }
            return n;
        }

        public void Dispose() => _inner.Dispose();
    }
}
