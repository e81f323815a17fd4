namespace BlkTarget.Vhost.Reactor;

/// <summary>
/// Work a reactor polls: one running virtqueue. All calls come from the reactor's own thread.
/// </summary>
public interface IReactorQueue
{
    /// <summary>Takes new requests, reaps completions, publishes used entries; returns how much happened.</summary>
    int Poll();

    /// <summary>Re-enables guest notifications before the reactor sleeps. Returns true when the queue still has
    /// work (new requests arrived meanwhile, or it has no kick fd and must be polled), so the reactor stays awake.</summary>
    bool PrepareToSleep();

    /// <summary>Called after the reactor woke; the queue may suppress guest notifications again.</summary>
    void WokeUp();

    /// <summary>Called when <see cref="Poll"/> threw: the queue must stop processing and count nothing as in
    /// flight any more, so that a later stop does not wait for requests that will never complete.</summary>
    void Fault(Exception error);

    /// <summary>The kick eventfd to sleep on, or -1 when there is none.</summary>
    int KickFd { get; }
}
