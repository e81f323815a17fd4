using System.Diagnostics;

namespace BlkTarget.Vhost.Reactor;

/// <summary>
/// Rate limit for logging a failure that may recur on every loop round (millions a second): the first occurrence
/// is logged, then at most one per interval, each saying how many were left out since the previous one. Used by
/// one thread only.
/// </summary>
internal sealed class FailureThrottle(TimeSpan interval)
{
    private readonly long _intervalTicks = (long)(interval.TotalSeconds * Stopwatch.Frequency);
    private bool _loggedOnce;
    private long _lastLogged;
    private long _suppressed;

    /// <summary>True when this occurrence should be logged; <paramref name="suppressed"/> is then the number of
    /// occurrences not logged since the previous report.</summary>
    public bool ShouldLog(out long suppressed)
    {
        long now = Stopwatch.GetTimestamp();
        if (_loggedOnce && now - _lastLogged < _intervalTicks)
        {
            _suppressed++;
            suppressed = 0;
            return false;
        }
        suppressed = _suppressed;
        _suppressed = 0;
        _loggedOnce = true;
        _lastLogged = now;
        return true;
    }
}
