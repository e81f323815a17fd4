namespace BlkTarget.Vhost.Reactor;

/// <summary>
/// Work a reactor polls: one running virtqueue. All calls come from the reactor's own thread.
/// </summary>
public interface IReactorQueue : IDisposable
{
    /// <summary>The device the queue belongs to, for log lines.</summary>
    string DeviceName { get; }

    /// <summary>The virtqueue's index within its device.</summary>
    int Index { get; }

    /// <summary>Takes new requests, reaps completions, publishes used entries; returns how much happened.</summary>
    int Poll();

    /// <summary>Re-enables guest notifications before the reactor sleeps. Returns true when the queue still has
    /// work (new requests arrived meanwhile, or it has no kick fd and must be polled), so the reactor stays awake.</summary>
    bool PrepareToSleep();

    /// <summary>Called after the reactor woke; the queue may suppress guest notifications again.</summary>
    void WokeUp();

    /// <summary>
    /// Called when <see cref="Poll"/> threw (a bug of ours, never guest input). The queue takes no new requests and
    /// publishes nothing more, but it keeps counting its backend operations: a later stop reports drained only
    /// once <see cref="BackendInFlight"/> is 0, because until then the kernel may still write into guest memory.
    /// </summary>
    void Fault(Exception error);

    /// <summary>True once the queue stopped after an internal error (<see cref="Fault"/> or a failed backend channel).</summary>
    bool Faulted { get; }

    /// <summary>Backend operations submitted and not yet returned (buffers the backend may still read or write);
    /// 0 for queues without a backend.</summary>
    int BackendInFlight { get; }

    /// <summary>While QoS holds a request of this queue back: the Stopwatch timestamp by which the reactor must poll it
    /// again (its sleep in epoll ends then at the latest); 0 when not throttled.</summary>
    long ThrottledUntil => 0;

    /// <summary>The kick eventfd to sleep on, or -1 when there is none.</summary>
    int KickFd { get; }
}
