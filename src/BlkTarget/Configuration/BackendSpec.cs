using BlkTarget.Storage.Nbd;
using BlkTarget.Storage.Ram;
using BlkTarget.Storage.Rbd;

namespace BlkTarget.Configuration;

/// <summary>
/// A parsed --backend value:
/// <list type="bullet">
/// <item><c>ram:SIZE[,hugepages=on|off]</c>: a RAM disk; in transparent huge pages by default, in reserved
/// hugetlb pages with hugepages=on, in plain 4 KiB pages with hugepages=off.</item>
/// <item><c>file:PATH[,cache=none|writeback]</c>: a regular file or block device through io_uring; O_DIRECT
/// (cache=none) unless cache=writeback.</item>
/// <item><c>image:PATH[,cache=none|writeback]</c>: a thin-provisioned BlkTarget image (docs/image-format.md).</item>
/// <item><c>rbd:POOL/IMAGE[,conf=PATH][,id=USER][,cache=none|writeback]</c>: a Ceph RBD image through librbd
/// (<see cref="Rbd"/>; <see cref="DirectIo"/> false = librbd's cache on, a volatile cache for the guest).</item>
/// <item><c>nbd:URI</c>: an export of an NBD server through libnbd, the URI as libnbd takes it
/// (<c>nbd+unix:///EXPORT?socket=PATH</c>, <c>nbd://HOST[:PORT]/EXPORT</c>; <see cref="NbdUri"/>).</item>
/// </list>
/// </summary>
public sealed record BackendSpec(string Kind, ulong SizeBytes = 0, string? Path = null, bool DirectIo = true,
    RamDiskPages Pages = RamDiskPages.Transparent, RbdLocation? Rbd = null, string? NbdUri = null)
{
    public const string Usage = "ram:SIZE[,hugepages=on|off], file:PATH[,cache=none|writeback], image:PATH[,cache=none|writeback], " +
        "rbd:POOL/IMAGE[,conf=PATH][,id=USER][,cache=none|writeback] or nbd:URI";

    /// <summary>The URI schemes libnbd connects to (TLS ones included: libnbd negotiates TLS itself).</summary>
    private static readonly string[] NbdSchemes = ["nbd://", "nbds://", "nbd+unix://", "nbds+unix://", "nbd+vsock://", "nbds+vsock://"];

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
            case "rbd":
                return TryParseRbd(text, argument, out spec, out error);
            case "nbd":
                // The rest is the URI, whole: a URI may contain ',' and ':' itself, so nbd: takes no options of ours.
                if (!NbdSchemes.Any(s => argument.StartsWith(s, StringComparison.Ordinal)) || argument.Length <= argument.IndexOf("//", StringComparison.Ordinal) + 2)
                {
                    error = $"backend '{text}': expected nbd:URI, e.g. nbd:nbd+unix:///export?socket=/run/nbd.sock or nbd:nbd://host:10809/export";
                    return false;
                }
                spec = new BackendSpec("nbd", NbdUri: argument);
                return true;
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

    private static bool TryParseRbd(string text, string argument, out BackendSpec? spec, out string? error)
    {
        spec = null;
        error = null;
        var parts = argument.Split(',');
        var names = parts[0].Split('/');
        if (names.Length != 2 || names[0].Length == 0 || names[1].Length == 0 || names.Any(n => n.Contains('@')))
        {
            error = $"backend '{text}': expected rbd:POOL/IMAGE, e.g. rbd:rbd/vm1";
            return false;
        }
        string? conf = null, user = null;
        bool direct = true;
        foreach (var option in parts.Skip(1))
        {
            int equals = option.IndexOf('=');
            string key = equals < 0 ? option : option[..equals], value = equals < 0 ? "" : option[(equals + 1)..];
            switch (key)
            {
                case "conf" when value.Length > 0: conf = value; break;
                case "id" when value.Length > 0 && !value.StartsWith("client.", StringComparison.Ordinal): user = value; break;
                case "cache" when value is "none" or "writeback": direct = value == "none"; break;
                default:
                    error = $"backend '{text}': bad option '{option}' (supported: conf=PATH, id=USER without 'client.', cache=none, cache=writeback)";
                    return false;
            }
        }
        spec = new BackendSpec("rbd", DirectIo: direct, Rbd: new RbdLocation(names[0], names[1], conf, user));
        return true;
    }

    /// <summary>What two disks must not share (a file's full path, an rbd image of a cluster); null for RAM.</summary>
    public string? Medium => Kind switch
    {
        "ram" => null,
        "rbd" => $"rbd:{Rbd!.Pool}/{Rbd.Image} of {Rbd.ConfPath ?? "the default cluster"}",
        "nbd" => $"nbd:{NbdUri}",
        _ => System.IO.Path.GetFullPath(Path!),
    };

    /// <summary>Whether the target can create this kind of medium (a file or image; not RAM, not rbd).</summary>
    public bool CanCreate => Kind is "file" or "image";

    /// <summary>The storage options of an rbd spec.</summary>
    public RbdDiskOptions ToRbdOptions(bool readOnly, uint blockSize)
    {
        var rbd = Rbd ?? throw new InvalidOperationException($"{this} is not an rbd backend");
        return new RbdDiskOptions
        {
            Pool = rbd.Pool, Image = rbd.Image, ConfPath = rbd.ConfPath, User = rbd.User, Writeback = !DirectIo,
            ReadOnly = readOnly, BlockSize = blockSize,
        };
    }

    /// <summary>The storage options of an nbd spec.</summary>
    public NbdDiskOptions ToNbdOptions(bool readOnly, uint blockSize) => new()
    {
        Uri = NbdUri ?? throw new InvalidOperationException($"{this} is not an nbd backend"), ReadOnly = readOnly, BlockSize = blockSize,
    };

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
        "rbd" => $"rbd:{Rbd}{(DirectIo ? "" : ",cache=writeback")}",
        "nbd" => $"nbd:{NbdUri}",
        _ => $"{Kind}:{Path}{(DirectIo ? "" : ",cache=writeback")}",
    };
}

/// <summary>Where an rbd image is: POOL/IMAGE, and the cluster's ceph.conf and cephx user (null: librados' defaults).
/// Prints as the rbd spec's middle part: <c>POOL/IMAGE[,conf=PATH][,id=USER]</c>.</summary>
public sealed record RbdLocation(string Pool, string Image, string? ConfPath, string? User)
{
    public override string ToString() => $"{Pool}/{Image}{(ConfPath is null ? "" : $",conf={ConfPath}")}{(User is null ? "" : $",id={User}")}";
}
