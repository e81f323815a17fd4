using System.Globalization;

namespace BlkTarget.Bench;

/// <summary>Human-readable numbers for the text report (the JSON report carries raw values).</summary>
internal static class Units
{
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    /// <summary>4096 -> "4k", 131072 -> "128k", 1048576 -> "1M" (binary, as fio writes them).</summary>
    public static string Bytes(ulong bytes)
    {
        string[] suffixes = ["", "k", "M", "G", "T"];
        int i = 0;
        double v = bytes;
        while (i < suffixes.Length - 1 && v >= 1024 && bytes % (1UL << (10 * (i + 1))) == 0)
        {
            v /= 1024;
            i++;
        }
        return v.ToString("0.##", Inv) + suffixes[i];
    }

    /// <summary>IOPS as "523.4k" / "1.02M".</summary>
    public static string Count(double value) => value switch
    {
        >= 1e6 => (value / 1e6).ToString("0.00", Inv) + "M",
        >= 1e3 => (value / 1e3).ToString("0.0", Inv) + "k",
        _ => value.ToString("0", Inv),
    };

    /// <summary>Nanoseconds as "812ns", "12.3us", "4.56ms".</summary>
    public static string Latency(double ns) => ns switch
    {
        >= 1e6 => (ns / 1e6).ToString("0.00", Inv) + "ms",
        >= 1e3 => (ns / 1e3).ToString("0.00", Inv) + "us",
        _ => ns.ToString("0", Inv) + "ns",
    };

    public static string Fixed(double value, string format = "0.00") => value.ToString(format, Inv);
}
