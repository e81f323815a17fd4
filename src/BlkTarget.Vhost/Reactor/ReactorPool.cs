using Microsoft.Extensions.Logging;

namespace BlkTarget.Vhost.Reactor;

/// <summary>
/// The process's reactors: one per CPU of the configured list (pinned), or a given number of unpinned ones.
/// Queues are spread over them round-robin.
/// </summary>
public sealed class ReactorPool : IDisposable
{
    private readonly Reactor[] _reactors;

    /// <summary>One pinned reactor per CPU in <paramref name="cpus"/>, or (none given) <paramref name="unpinnedCount"/>
    /// unpinned ones (at least one). <paramref name="log"/> receives what goes wrong on the reactor threads.</summary>
    public ReactorPool(IReadOnlyList<int>? cpus, int unpinnedCount, TimeSpan idleSpin, ILogger log)
    {
        if (cpus is { Count: > 0 })
            _reactors = cpus.Select((cpu, i) => new Reactor(i, cpu, idleSpin, log)).ToArray();
        else
            _reactors = Enumerable.Range(0, Math.Max(1, unpinnedCount)).Select(i => new Reactor(i, null, idleSpin, log)).ToArray();
    }

    public static TimeSpan DefaultIdleSpin => TimeSpan.FromMicroseconds(200);

    public IReadOnlyList<Reactor> Reactors => _reactors;

    /// <summary>The reactor that owns queue <paramref name="queueIndex"/> of a device; the device offset spreads
    /// the first queues of different devices over different reactors.</summary>
    public Reactor ForQueue(int deviceOffset, int queueIndex) => _reactors[(deviceOffset + queueIndex) % _reactors.Length];

    public void Dispose()
    {
        foreach (var reactor in _reactors) reactor.Dispose();
    }
}
