using System.Diagnostics;
using System.Globalization;

namespace BlkTarget.Commands;

/// <summary>
/// One self-rewriting status line for long image operations (percent, rate, ETA) on stderr, shown only when
/// stderr is a terminal: piped or redirected output stays free of it. Updates at most a few times a second;
/// disposing erases the line.
/// </summary>
internal sealed class ProgressDisplay : IDisposable
{
    private static readonly TimeSpan Interval = TimeSpan.FromMilliseconds(250), RateWindow = TimeSpan.FromSeconds(3);
    private readonly string _label;
    private readonly TextWriter _writer;
    private readonly bool _enabled;
    private readonly Func<TimeSpan> _clock;
    private readonly Queue<(TimeSpan At, ulong Done)> _samples = new();
    private TimeSpan? _lastDraw;
    private int _drawnWidth;

    public ProgressDisplay(string label, TextWriter writer, bool enabled, Func<TimeSpan>? clock = null)
    {
        _label = label;
        _writer = writer;
        _enabled = enabled;
        var watch = Stopwatch.StartNew();
        _clock = clock ?? (() => watch.Elapsed);
    }

    /// <summary>A display on stderr when it is a terminal, silent otherwise.</summary>
    public static ProgressDisplay ForTerminal(string label) => new(label, Console.Error, !Console.IsErrorRedirected);

    public void Report(ulong done, ulong total)
    {
        if (!_enabled) return;
        var now = _clock();
        _samples.Enqueue((now, done));
        while (_samples.Count > 2 && now - _samples.Peek().At > RateWindow) _samples.Dequeue();
        if (_lastDraw is { } last && now - last < Interval && done < total) return;
        _lastDraw = now;
        string line = Format(done, total, now);
        _writer.Write("\r" + line.PadRight(_drawnWidth));
        _writer.Flush();
        _drawnWidth = line.Length;
    }

    /// <summary>"convert  42.0%  1.2 GiB / 10.0 GiB  310.5 MiB/s  ETA 0:27".</summary>
    internal string Format(ulong done, ulong total, TimeSpan now)
    {
        double fraction = total == 0 ? 1 : Math.Min(1.0, (double)done / total);
        var (oldAt, oldDone) = _samples.Count > 0 ? _samples.Peek() : (now, done);
        double seconds = (now - oldAt).TotalSeconds;
        double rate = seconds > 0.05 && done >= oldDone ? (done - oldDone) / seconds : 0;
        string eta = rate > 0 && done < total ? Duration(TimeSpan.FromSeconds((total - done) / rate)) : "--:--";
        return string.Create(CultureInfo.InvariantCulture,
            $"{_label} {fraction * 100,5:0.0}%  {Human(done)} / {Human(total)}  {rate / (1 << 20),7:0.0} MiB/s  ETA {eta}");
    }

    internal static string Duration(TimeSpan t) => t.TotalHours >= 1
        ? string.Create(CultureInfo.InvariantCulture, $"{(int)t.TotalHours}:{t.Minutes:00}:{t.Seconds:00}")
        : string.Create(CultureInfo.InvariantCulture, $"{t.Minutes}:{t.Seconds:00}");

    /// <summary>Bytes with one decimal in binary units: "7.7 MiB".</summary>
    internal static string Human(ulong bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
        double value = bytes;
        int unit = 0;
        while (value >= 1024 && unit < units.Length - 1)
        {
            value /= 1024;
            unit++;
        }
        return unit == 0 ? $"{bytes} B" : string.Create(CultureInfo.InvariantCulture, $"{value:0.0} {units[unit]}");
    }

    public void Dispose()
    {
        if (!_enabled || _drawnWidth == 0) return;
        _writer.Write("\r" + new string(' ', _drawnWidth) + "\r");
        _writer.Flush();
    }
}
