using System.Diagnostics;
using BlkTarget.Vhost.Reactor;

namespace BlkTarget.Monitoring;

/// <summary>
/// Samples every reactor's <see cref="Reactor.BusySeconds"/> once per <paramref name="interval"/> (a timer, off the data
/// path) and keeps each one's load over the last interval (0..1) for blktarget_reactor_busy_ratio.
/// </summary>
public sealed class ReactorLoadSampler : IDisposable
{
    private readonly IReadOnlyList<Reactor> _reactors;
    private readonly double[] _lastBusy;
    private readonly double[] _ratios;
    private readonly Timer _timer;
    private readonly object _gate = new();
    private long _lastTime;

    public ReactorLoadSampler(IReadOnlyList<Reactor> reactors, TimeSpan interval)
    {
        _reactors = reactors;
        _lastBusy = reactors.Select(r => r.BusySeconds).ToArray();
        _ratios = new double[reactors.Count];
        _lastTime = Stopwatch.GetTimestamp();
        _timer = new Timer(_ => Sample(), null, interval, interval);
    }

    /// <summary>Per reactor index, its load over the last completed interval (0 before the first one ends).</summary>
    public IReadOnlyList<double> Ratios
    {
        get { lock (_gate) return _ratios.ToArray(); }
    }

    private void Sample()
    {
        lock (_gate)
        {
            long now = Stopwatch.GetTimestamp();
            double elapsed = Stopwatch.GetElapsedTime(_lastTime, now).TotalSeconds;
            _lastTime = now;
            for (int i = 0; i < _reactors.Count; i++)
            {
                double busy = _reactors[i].BusySeconds;
                _ratios[i] = elapsed > 0 ? Math.Clamp((busy - _lastBusy[i]) / elapsed, 0, 1) : 0;
                _lastBusy[i] = busy;
            }
        }
    }

    public void Dispose() => _timer.Dispose();
}
