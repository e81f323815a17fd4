using BlkTarget.Storage.Interop;
using static BlkTarget.Storage.Interop.FileNative;

namespace BlkTarget.Storage.Image;

/// <summary>What kind of inconsistency <see cref="ImageChecker"/> found.</summary>
public enum ImageProblemKind
{
    /// <summary>An entry names the header or map area, or a cluster no healthy image can reach. Corruption.</summary>
    InvalidEntry,
    /// <summary>Two entries name the same physical cluster. Corruption.</summary>
    SharedCluster,
    /// <summary>Non-zero bytes between the last entry and the end of the map area. Corruption.</summary>
    MapPadding,
    /// <summary>An entry names a cluster past the end of the file: it reads as zeros and holds no space; left by
    /// an allocation whose data write a crash cut short. Harmless.</summary>
    BeyondEndOfFile,
    /// <summary>Physical clusters hold data that no entry references: space wasted, e.g. by a crash between
    /// unmapping a cluster and punching it. Harmless (such clusters are punched before reuse).</summary>
    LeakedClusters,
}

public sealed record ImageProblem(ImageProblemKind Kind, string Message)
{
    /// <summary>Corruption (the map is wrong) as opposed to a leak (space or accounting only; data intact).</summary>
    public bool IsCorruption => Kind is ImageProblemKind.InvalidEntry or ImageProblemKind.SharedCluster or ImageProblemKind.MapPadding;
}

/// <summary>The outcome of a check, and of the repair when one was asked for.</summary>
public sealed class ImageCheckResult
{
    public required ImageHeader Header { get; init; }
    public required ulong FileSize { get; init; }
    /// <summary>What the check found (before any repair).</summary>
    public required IReadOnlyList<ImageProblem> Problems { get; init; }
    public required ulong AllocatedClusters { get; init; }
    public required ulong LeakedClusters { get; init; }
    /// <summary>What --repair did, one line each (empty without repair).</summary>
    public List<string> Repairs { get; } = [];
    /// <summary>Problems still there after the repair (the check's problems when nothing was repaired).</summary>
    public IReadOnlyList<ImageProblem> Remaining { get; set; } = [];
    public bool Clean => Remaining.Count == 0;
    public bool HasCorruption => Remaining.Any(p => p.IsCorruption);
}

/// <summary>
/// `blktarget image check`: verifies the allocation map (invalid and shared entries, garbage in the padding,
/// entries past the end of the file) and the free space (leaked clusters: data in physical clusters no entry
/// references, found with SEEK_DATA/SEEK_HOLE). A plain check opens the image read-only and never writes it.
/// A repair opens it exclusively and changes only what it must: it clears invalid entries, clears every entry
/// but the first (lowest virtual cluster) that shares a physical cluster, clears entries past the end of the
/// file (they read as zeros either way), zeroes the padding, writes and syncs the map, and only then punches
/// the leaked clusters and syncs again.
/// </summary>
public static class ImageChecker
{
    public static ImageCheckResult Check(string path, bool repair = false, ProgressCallback? progress = null)
    {
        using var image = ImageFile.Open(path, readOnly: !repair, directIo: false, allowCorruptMap: true);
        ulong fileSize = FileSizeOf(image);
        var scan = Scan(image, fileSize, progress);
        var result = new ImageCheckResult
        {
            Header = image.Header,
            FileSize = fileSize,
            Problems = scan.Problems,
            AllocatedClusters = scan.Allocated,
            LeakedClusters = scan.LeakedClusters,
            Remaining = scan.Problems,
        };
        if (!repair || scan.Problems.Count == 0) return result;

        Repair(image, scan, result.Repairs);
        result.Remaining = Scan(image, FileSizeOf(image), null).Problems;
        return result;
    }

    private static ulong FileSizeOf(ImageFile image) =>
        (StatFd(image.Fd) ?? throw new IOException($"{image.Path}: statx failed: {LastError()}")).Size;

    private sealed class ScanResult
    {
        public List<ImageProblem> Problems { get; } = [];
        /// <summary>Virtual clusters whose entry a repair clears.</summary>
        public List<ulong> EntriesToClear { get; } = [];
        public bool DirtyPadding { get; set; }
        public List<(ulong First, ulong Count)> Leaks { get; } = [];
        public ulong Allocated { get; set; }
        public ulong LeakedClusters { get; set; }
    }

    private static ScanResult Scan(ImageFile image, ulong fileSize, ProgressCallback? progress)
    {
        var header = image.Header;
        var scan = new ScanResult();
        ulong fileClusters = image.FileClusters(fileSize);
        ulong limit = fileClusters + header.MapEntries;   // plausible physical clusters lie below
        ulong total = header.MapEntries + fileClusters;
        var referenced = new ulong[(limit + 63) / 64];
        var shared = new List<(ulong Virtual, ulong Physical)>();
        progress?.Invoke(0, total);

        for (ulong v = 0; v < header.MapEntries; v++)
        {
            if ((v & 0xFFFFF) == 0) progress?.Invoke(v, total);
            ulong p = image.Entry(v);
            if (p == 0) continue;
            scan.Allocated++;
            if (!image.IsPlausibleEntry(p, fileClusters))
            {
                string why = p < header.FirstDataCluster ? "inside the header or map area"
                    : p > image.MaxPhysicalCluster ? "beyond any possible cluster"
                    : $"far beyond the end of the file ({fileClusters} clusters)";
                scan.Problems.Add(new(ImageProblemKind.InvalidEntry, $"virtual cluster {v} maps to invalid physical cluster {p} ({why})"));
                scan.EntriesToClear.Add(v);
                continue;
            }
            ref ulong word = ref referenced[p / 64];
            ulong bit = 1UL << (int)(p % 64);
            if ((word & bit) != 0)
            {
                shared.Add((v, p));
                scan.EntriesToClear.Add(v);
                continue;
            }
            word |= bit;
            if (p >= fileClusters)
            {
                scan.Problems.Add(new(ImageProblemKind.BeyondEndOfFile,
                    $"virtual cluster {v} maps to physical cluster {p}, past the end of the file (reads as zeros; an allocation cut short by a crash)"));
                scan.EntriesToClear.Add(v);
            }
        }
        if (shared.Count > 0)
        {
            // The first (lowest) virtual cluster naming each shared physical cluster keeps it.
            var owners = shared.Select(s => s.Physical).ToHashSet().ToDictionary(p => p, _ => ulong.MaxValue);
            for (ulong v = 0; v < header.MapEntries; v++)
                if (owners.TryGetValue(image.Entry(v), out ulong owner) && owner == ulong.MaxValue) owners[image.Entry(v)] = v;
            foreach (var (v, p) in shared)
                scan.Problems.Add(new(ImageProblemKind.SharedCluster, $"virtual cluster {v} maps to physical cluster {p}, which virtual cluster {owners[p]} maps too"));
        }
        if (!image.MapPaddingIsClean)
        {
            scan.Problems.Add(new(ImageProblemKind.MapPadding, "garbage after the last map entry (the map's padding must be zero)"));
            scan.DirtyPadding = true;
        }

        FindLeaks(image, fileSize, referenced, scan, progress, header.MapEntries, total);
        progress?.Invoke(total, total);
        return scan;
    }

    /// <summary>Walks the file's data extents past the map; a physical cluster holding data that no plausible
    /// entry references is leaked.</summary>
    private static void FindLeaks(ImageFile image, ulong fileSize, ulong[] referenced, ScanResult scan, ProgressCallback? progress, ulong done, ulong total)
    {
        int shift = image.Header.ClusterShift;
        ulong runFirst = 0, runCount = 0;
        void Flush()
        {
            if (runCount == 0) return;
            scan.Leaks.Add((runFirst, runCount));
            scan.LeakedClusters += runCount;
            string which = runCount == 1 ? $"physical cluster {runFirst} holds" : $"physical clusters {runFirst}-{runFirst + runCount - 1} ({runCount}) hold";
            scan.Problems.Add(new(ImageProblemKind.LeakedClusters, $"{which} data no map entry references (leaked space)"));
            runCount = 0;
        }
        foreach (var (offset, length) in DataExtents(image.Fd, image.Header.DataOffset, fileSize))
        {
            for (ulong p = offset >> shift; p <= (offset + length - 1) >> shift; p++)
            {
                if ((p & 0xFFFF) == 0) progress?.Invoke(done + p, total);
                bool used = p / 64 < (ulong)referenced.Length && (referenced[p / 64] & (1UL << (int)(p % 64))) != 0;
                if (used) continue;
                if (runCount > 0 && runFirst + runCount == p)
                {
                    runCount++;
                    continue;
                }
                Flush();
                runFirst = p;
                runCount = 1;
            }
        }
        Flush();
    }

    /// <summary>The data extents of [from, fileSize) by SEEK_DATA/SEEK_HOLE (all of it where those are not
    /// supported).</summary>
    private static IEnumerable<(ulong Offset, ulong Length)> DataExtents(int fd, ulong from, ulong fileSize)
    {
        ulong pos = from;
        while (pos < fileSize)
        {
            long data = lseek(fd, (long)pos, SEEK_DATA);
            if (data < 0)
            {
                if (Errno.Last != Errno.ENXIO) yield return (pos, fileSize - pos);
                yield break;
            }
            long hole = lseek(fd, data, SEEK_HOLE);
            ulong end = hole < 0 ? fileSize : Math.Min((ulong)hole, fileSize);
            if ((ulong)data >= end) yield break;
            yield return ((ulong)data, end - (ulong)data);
            pos = end;
        }
    }

    private static void Repair(ImageFile image, ScanResult scan, List<string> repairs)
    {
        // 1. The map: every change in memory, then the touched blocks (or the whole map), then fsync. Clearing
        //    never frees a cluster another entry still needs: invalid entries name no data cluster, a shared
        //    cluster stays with its first owner, and clusters past the end of the file hold nothing.
        foreach (ulong v in scan.EntriesToClear) image.ClearEntry(v);
        int invalid = scan.Problems.Count(p => p.Kind == ImageProblemKind.InvalidEntry);
        int shared = scan.Problems.Count(p => p.Kind == ImageProblemKind.SharedCluster);
        int beyond = scan.Problems.Count(p => p.Kind == ImageProblemKind.BeyondEndOfFile);
        if (scan.DirtyPadding) image.ClearMapPadding();
        if (scan.DirtyPadding)
        {
            image.RewriteMap();
        }
        else if (scan.EntriesToClear.Count > 0)
        {
            foreach (ulong block in scan.EntriesToClear.Select(v => v / (ImageFile.MapBlockSize / 8)).Distinct())
                image.RewriteMapBlock(block * (ImageFile.MapBlockSize / 8));
            image.Sync();
        }
        if (invalid > 0) repairs.Add($"cleared {invalid} invalid map {Plural(invalid, "entry", "entries")} (those virtual clusters now read as zeros)");
        if (shared > 0) repairs.Add($"cleared {shared} map {Plural(shared, "entry", "entries")} that shared a physical cluster with a lower virtual cluster (those virtual clusters now read as zeros)");
        if (beyond > 0) repairs.Add($"cleared {beyond} map {Plural(beyond, "entry", "entries")} past the end of the file (they read as zeros before and after)");
        if (scan.DirtyPadding) repairs.Add("zeroed the map's padding");

        // 2. Only with the map durable: give the leaked clusters back, and make the holes durable too.
        if (scan.Leaks.Count == 0) return;
        int shift = image.Header.ClusterShift;
        foreach (var (first, count) in scan.Leaks)
            if (fallocate(image.Fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (long)(first << shift), (long)(count << shift)) != 0)
                throw new IOException($"{image.Path}: cannot punch leaked clusters {first}-{first + count - 1}: {LastError()}");
        image.Sync();
        repairs.Add($"punched {scan.LeakedClusters} leaked {Plural((long)scan.LeakedClusters, "cluster", "clusters")} ({scan.LeakedClusters << shift} bytes returned to the file system)");
    }

    private static string Plural(long n, string one, string many) => n == 1 ? one : many;
}
