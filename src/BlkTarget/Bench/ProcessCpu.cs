using System.Globalization;

namespace BlkTarget.Bench;

/// <summary>
/// CPU time (user + system) a process has used so far, from /proc/PID/stat: fields 14 and 15, in clock ticks of
/// USER_HZ (100 per second on Linux/x86; the resolution is 10 ms, fine over runs of seconds). Includes threads
/// that already exited.
/// </summary>
public static class ProcessCpu
{
    private const double TicksPerSecond = 100.0;

    /// <summary>Seconds of CPU used by <paramref name="pid"/>, or null when it cannot be read (gone, no access).</summary>
    public static double? Seconds(int pid)
    {
        string text;
        try
        {
            text = File.ReadAllText($"/proc/{pid}/stat");
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
        return Parse(text);
    }

    public static double? SelfSeconds() => Seconds(Environment.ProcessId);

    /// <summary>Parses a /proc/PID/stat line. The command name (field 2) is in parentheses and may contain spaces
    /// and parentheses itself, so fields are counted from the last ')'.</summary>
    public static double? Parse(string stat)
    {
        int close = stat.LastIndexOf(')');
        if (close < 0) return null;
        var fields = stat[(close + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
        // fields[0] is field 3 (state); utime is field 14, stime field 15.
        if (fields.Length < 13) return null;
        if (!ulong.TryParse(fields[11], NumberStyles.None, CultureInfo.InvariantCulture, out ulong utime) ||
            !ulong.TryParse(fields[12], NumberStyles.None, CultureInfo.InvariantCulture, out ulong stime))
            return null;
        return (utime + stime) / TicksPerSecond;
    }

    /// <summary>The process's command name (field 2 of stat), for the report; null when gone.</summary>
    public static string? Name(int pid)
    {
        try
        {
            return File.ReadAllText($"/proc/{pid}/comm").Trim();
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
    }
}
