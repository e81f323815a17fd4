using BenchmarkDotNet.Attributes;
using BlkTarget.Vhost.Queues;

namespace BlkTarget.Benchmarks;

/// <summary>
/// Completing requests on the used ring: write the element, publish used->idx (release store), decide whether
/// the guest wants an interrupt (full fence + used_event). Per request when the reactor completes one request
/// per round, and amortised over a batch of 32 (what a loaded queue does).
/// </summary>
[MemoryDiagnoser]
public class UsedRingBenchmarks
{
    private const int Batch = 32;
    private RingFixture _fixture = null!;
    private SplitRing _ring = null!;

    [GlobalSetup]
    public void Setup()
    {
        _fixture = new RingFixture(256);
        _ring = _fixture.CreateRing(eventIdx: true);
    }

    [GlobalCleanup]
    public void Cleanup() => _fixture.Dispose();

    [Benchmark(Baseline = true)]
    public bool PublishEach()
    {
        _ring.PushUsed(0, 4097);
        _ring.PublishUsed();
        return _ring.ShouldSignal();
    }

    [Benchmark(OperationsPerInvoke = Batch)]
    public bool PublishBatchOf32()
    {
        for (ushort i = 0; i < Batch; i++) _ring.PushUsed(i, 4097);
        _ring.PublishUsed();
        return _ring.ShouldSignal();
    }
}
