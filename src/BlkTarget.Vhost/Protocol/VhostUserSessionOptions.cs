namespace BlkTarget.Vhost.Protocol;

/// <summary>How a server's sessions treat their frontends.</summary>
public sealed record VhostUserSessionOptions
{
    public static readonly TimeSpan DefaultDrainTimeout = TimeSpan.FromSeconds(30);

    /// <summary>
    /// How long stopping a queue (GET_VRING_BASE, a memory table change, a reset, the end of the session) waits for
    /// the requests it has in flight. Past it the queue is abandoned: taken off its reactor before its eventfds are
    /// closed, its requests never completed to the guest, and the session's guest memory left mapped because the
    /// backend may still write into it. Between 1 ms and 24 h; default 30 s.
    /// </summary>
    public TimeSpan DrainTimeout { get; init; } = DefaultDrainTimeout;

    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> for a drain timeout outside 1 ms..24 h.</summary>
    public void Validate()
    {
        if (DrainTimeout < TimeSpan.FromMilliseconds(1) || DrainTimeout > TimeSpan.FromHours(24))
            throw new ArgumentOutOfRangeException(nameof(DrainTimeout), DrainTimeout, "the drain timeout must be between 1 ms and 24 h");
    }
}
