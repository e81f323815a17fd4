namespace BlkTarget.Storage.Faults;

/// <summary>One rule of a <see cref="FaultInjectingDisk"/>: requests it matches fail with <see cref="Status"/>, or with
/// <see cref="Hold"/> are never answered.</summary>
public sealed record FaultRule(BlockStatus Status)
{
    /// <summary>Matching requests are accepted and then neither executed nor completed, like a device that stopped
    /// answering: they stay in flight (counted in <see cref="IBlockChannel.InFlight"/>) until the channel is cancelled
    /// or the process ends. For tests that need requests really in flight when the target is killed.</summary>
    public bool Hold { get; init; }
    /// <summary>Only this kind of request (null: any).</summary>
    public BlockOperation? Operation { get; init; }
    /// <summary>Only requests overlapping [RangeStart, RangeStart + RangeLength) in bytes.</summary>
    public ulong RangeStart { get; init; }
    public ulong RangeLength { get; init; } = ulong.MaxValue;
    /// <summary>How many matching requests fail before the rule stops firing (int.MaxValue: always).</summary>
    public int Count { get; init; } = int.MaxValue;

    internal bool Matches(in BlockRequest request) =>
        (Operation is null || Operation == request.Operation) &&
        request.Offset < RangeStart + Math.Min(RangeLength, ulong.MaxValue - RangeStart) &&
        RangeStart < request.Offset + Math.Max(request.Length, 1);
}

/// <summary>
/// A backend wrapper that fails or holds chosen requests (like SPDK's error bdev): for testing how the device models and
/// guests handle I/O errors and requests that stay in flight. Requests the rules do not match pass through unchanged; a failed request never
/// reaches the inner backend, so a failed write changes nothing.
/// </summary>
public sealed class FaultInjectingDisk(IBlockDevice inner, IEnumerable<FaultRule> rules) : IBlockDevice
{
    private readonly FaultRule[] _rules = rules.ToArray();
    private readonly int[] _fired = new int[rules.Count()];

    public BlockDeviceInfo Info => inner.Info;

    public void Resize(ulong newSizeBytes) => inner.Resize(newSizeBytes);

    /// <summary>How many requests the rules have failed so far.</summary>
    public int Injected => _fired.Sum();

    public IBlockChannel OpenChannel(IoContext io, IBlockCompletionSink sink, int maxInFlight) =>
        new Channel(this, inner.OpenChannel(io, sink, maxInFlight), sink);

    /// <summary>The rule that fires for <paramref name="request"/>, or null to let it through. Thread-safe:
    /// channels of several reactors consult the same rules.</summary>
    private FaultRule? Decide(in BlockRequest request)
    {
        for (int i = 0; i < _rules.Length; i++)
        {
            if (!_rules[i].Matches(request)) continue;
            if (Interlocked.Increment(ref _fired[i]) <= _rules[i].Count) return _rules[i];
            Interlocked.Decrement(ref _fired[i]);
        }
        return null;
    }

    public void Dispose() => inner.Dispose();

    private sealed class Channel(FaultInjectingDisk owner, IBlockChannel inner, IBlockCompletionSink sink) : IBlockChannel
    {
        private int _held;

        public int InFlight => inner.InFlight + _held;

        public void Submit(in BlockRequest request)
        {
            var rule = owner.Decide(request);
            if (rule is null) inner.Submit(request);
            else if (rule.Hold) _held++;
            else sink.Complete(request.Tag, rule.Status);
        }

        /// <summary>Held requests never reached anything: dropping them is all there is to stop.</summary>
        public void Cancel()
        {
            _held = 0;
            inner.Cancel();
        }

        public void Dispose() => inner.Dispose();
    }
}
