using System.Globalization;

namespace BlkTarget.Configuration;

/// <summary>Parses CPU lists in the taskset/cpuset style: "0", "0,2", "0-3", "0-1,6".</summary>
public static class CpuListParser
{
    public const int MaxCpu = 1023;

    public static bool TryParse(string text, out List<int> cpus, out string? error)
    {
        cpus = [];
        error = null;
        foreach (var part in text.Split(',', StringSplitOptions.TrimEntries))
        {
            var bounds = part.Split('-', StringSplitOptions.TrimEntries);
            if (bounds.Length is 0 or > 2 || !bounds.All(b => int.TryParse(b, NumberStyles.None, CultureInfo.InvariantCulture, out _)))
            {
                error = $"'{part}' is not a CPU number or range";
                return false;
            }
            int first = int.Parse(bounds[0], CultureInfo.InvariantCulture);
            int last = bounds.Length == 2 ? int.Parse(bounds[1], CultureInfo.InvariantCulture) : first;
            if (last < first || last > MaxCpu)
            {
                error = $"'{part}' is not a valid CPU range";
                return false;
            }
            for (int cpu = first; cpu <= last; cpu++)
                if (!cpus.Contains(cpu)) cpus.Add(cpu);
        }
        return true;
    }
}
