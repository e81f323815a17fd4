using BlkTarget.Storage.Ram;

namespace BlkTarget.Configuration;

/// <summary>
/// A parsed --backend value:
/// <list type="bullet">
/// <item><c>ram:SIZE[,hugepages=on|off]</c>: a RAM disk; in transparent huge pages by default, in reserved
/// hugetlb pages with hugepages=on, in plain 4 KiB pages with hugepages=off.</item>
/// <item><c>file:PATH[,cache=none|writeback]</c>: a regular file or block device through io_uring; O_DIRECT
/// (cache=none) unless cache=writeback.</item>
/// <item><c>image:PATH[,cache=none|writeback]</c>: a thin-provisioned BlkTarget image (docs/image-format.md).</item>
/// </list>
/// </summary>
public sealed record BackendSpec(string Kind, ulong SizeBytes = 0, string? Path = null, bool DirectIo = true,
    RamDiskPages Pages = RamDiskPages.Transparent)
{
    public const string Usage = "ram:SIZE[,hugepages=on|off], file:PATH[,cache=none|writeback] or image:PATH[,cache=none|writeback]";

    public static bool TryParse(string text, out BackendSpec? spec, out string? error)
    {
        spec = null;
        error = null;
        int colon = text.IndexOf(':');
        string kind = colon < 0 ? text : text[..colon];
        string argument = colon < 0 ? "" : text[(colon + 1)..];
        switch (kind)
        {
            case "ram":
            {
                var parts = argument.Split(',');
                if (!SizeParser.TryParse(parts[0], out ulong size) || size == 0)
                {
                    error = $"backend '{text}': expected ram:SIZE, e.g. ram:1G";
                    return false;
                }
                var pages = RamDiskPages.Transparent;
                foreach (var option in parts.Skip(1))
                {
                    switch (option)
                    {
                        case "hugepages=on": pages = RamDiskPages.Hugetlb; break;
                        case "hugepages=off": pages = RamDiskPages.Small; break;
                        default:
                            error = $"backend '{text}': unknown option '{option}' (supported: hugepages=on, hugepages=off)";
                            return false;
                    }
                }
                spec = new BackendSpec("ram", size, Pages: pages);
                return true;
            }
            case "file":
            case "image":
                return TryParsePath(kind, text, argument, out spec, out error);
            default:
                error = $"backend '{text}': unknown kind '{kind}' (supported: {Usage})";
                return false;
        }
    }

    private static bool TryParsePath(string kind, string text, string argument, out BackendSpec? spec, out string? error)
    {
        spec = null;
        error = null;
        var parts = argument.Split(',');
        if (parts[0].Length == 0)
        {
            error = $"backend '{text}': expected {kind}:PATH, e.g. {kind}:/var/lib/vm1.{(kind == "file" ? "img" : "bti")}";
            return false;
        }
        bool direct = true;
        foreach (var option in parts.Skip(1))
        {
            switch (option)
            {
                case "cache=none": direct = true; break;
                case "cache=writeback": direct = false; break;
                default:
                    error = $"backend '{text}': unknown option '{option}' (supported: cache=none, cache=writeback)";
                    return false;
            }
        }
        spec = new BackendSpec(kind, Path: parts[0], DirectIo: direct);
        return true;
    }

    /// <summary>The spec as `--backend` takes it back (ram sizes in the largest whole binary unit: ram:64M), for
    /// saved configs and listings.</summary>
    public string ToSpec() => Kind switch
    {
        "ram" => $"ram:{CompactSize(SizeBytes)}{PagesOption}",
        _ => ToString(),
    };

    /// <summary>The ram: option that selects <see cref="Pages"/> ("" for the default, transparent huge pages).</summary>
    private string PagesOption => Pages switch { RamDiskPages.Hugetlb => ",hugepages=on", RamDiskPages.Small => ",hugepages=off", _ => "" };

    private static string CompactSize(ulong bytes)
    {
        foreach (var (unit, factor) in new[] { ("T", 1UL << 40), ("G", 1UL << 30), ("M", 1UL << 20), ("K", 1UL << 10) })
            if (bytes % factor == 0) return $"{bytes / factor}{unit}";
        return bytes.ToString(System.Globalization.CultureInfo.InvariantCulture);
    }

    public override string ToString() => Kind switch
    {
        "ram" => $"ram:{SizeParser.Format(SizeBytes)}{PagesOption}",
        _ => $"{Kind}:{Path}{(DirectIo ? "" : ",cache=writeback")}",
    };
}
