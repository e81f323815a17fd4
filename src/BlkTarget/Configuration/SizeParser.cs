using System.Globalization;

namespace BlkTarget.Configuration;

/// <summary>Parses sizes like "1G", "512M", "4KiB" or "1073741824" (binary units, as QEMU does).</summary>
public static class SizeParser
{
    public static bool TryParse(string text, out ulong bytes)
    {
        bytes = 0;
        var s = text.Trim();
        if (s.Length == 0) return false;
        int shift = 0;
        string[] suffixes = ["TIB", "GIB", "MIB", "KIB", "TB", "GB", "MB", "KB", "T", "G", "M", "K", "B"];
        string upper = s.ToUpperInvariant();
        foreach (var suffix in suffixes)
        {
            if (!upper.EndsWith(suffix, StringComparison.Ordinal)) continue;
            shift = suffix[0] switch { 'T' => 40, 'G' => 30, 'M' => 20, 'K' => 10, _ => 0 };
            s = s[..^suffix.Length];
            break;
        }
        if (!ulong.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out ulong value)) return false;
        if (shift > 0 && value > ulong.MaxValue >> shift) return false;
        bytes = value << shift;
        return true;
    }

    public static string Format(ulong bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB"];
        int unit = 0;
        ulong value = bytes;
        while (unit < units.Length - 1 && value >= 1024 && value % 1024 == 0)
        {
            value /= 1024;
            unit++;
        }
        return $"{value.ToString(CultureInfo.InvariantCulture)} {units[unit]}";
    }
}
