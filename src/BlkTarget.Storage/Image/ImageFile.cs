using System.Runtime.InteropServices;
using BlkTarget.Storage.Interop;
using static BlkTarget.Storage.Interop.FileNative;

namespace BlkTarget.Storage.Image;

/// <summary>
/// An open sparse image: its header, its allocation map (held in memory, an exact copy of the on-disk map)
/// and the metadata operations that keep the two consistent through crashes:
/// <list type="bullet">
/// <item>A data cluster is only ever mapped while it is a hole (freshly appended, or punched), so a crash
/// between writing a map entry and writing the data exposes zeros, never another cluster's data.</item>
/// <item>A deallocated cluster is reused only after a flush made its unmapping durable, so no crash can leave
/// two map entries pointing at the same cluster.</item>
/// <item>Each map update rewrites the 4 KiB map block holding the entry; an 8-byte entry never straddles a
/// sector, so a torn write leaves each entry either old or new.</item>
/// </list>
/// Metadata calls are serialised by <see cref="MetadataLock"/>; data I/O needs no lock.
/// </summary>
public sealed unsafe class ImageFile : IDisposable
{
    public const int MapBlockSize = 4096;
    private const int EntriesPerBlock = MapBlockSize / 8;

    private readonly OwnedFd _fd;
    private readonly byte* _map;
    private readonly Stack<ulong> _free = new();
    private readonly List<ulong> _freeAfterFlush = [];
    private ulong _nextAppend;

    private ImageFile(OwnedFd fd, string path, ImageHeader header, byte* map, bool readOnly)
    {
        _fd = fd;
        Path = path;
        Header = header;
        _map = map;
        ReadOnly = readOnly;
    }

    public string Path { get; }
    public ImageHeader Header { get; }
    public bool ReadOnly { get; }
    internal int Fd => _fd.Fd;
    /// <summary>Serialises allocation, deallocation and free-space bookkeeping across reactor threads.</summary>
    public object MetadataLock { get; } = new();
    public ulong ClusterSize => Header.ClusterSize;

    /// <summary>Physical cluster of virtual cluster <paramref name="virtualCluster"/>, 0 when unallocated.
    /// Safe from any thread: entries are aligned 8-byte words.</summary>
    public ulong Entry(ulong virtualCluster) => Volatile.Read(ref ((ulong*)_map)[virtualCluster]);

    public ulong AllocatedClusters
    {
        get
        {
            ulong count = 0;
            for (ulong v = 0; v < Header.MapEntries; v++) if (Entry(v) != 0) count++;
            return count;
        }
    }

    /// <summary>Creates a new empty image (all clusters unallocated) and makes it durable.</summary>
    public static void Create(string path, ulong virtualSize, uint clusterSize = ImageHeader.DefaultClusterSize)
    {
        var header = ImageHeader.ForNewImage(virtualSize, clusterSize);
        int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0x1A0);
        if (fd < 0) throw new IOException($"cannot create {path}: {LastError()}");
        using var owner = new OwnedFd(fd);
        try
        {
            var bytes = new byte[ImageHeader.Length];
            header.Write(bytes);
            fixed (byte* p = bytes) PwriteFully(fd, p, bytes.Length, 0, path);
            // The map area and everything after it are holes: reading them gives zeros = unallocated.
            if (ftruncate(fd, (long)header.DataOffset) != 0) throw new IOException($"cannot size {path}: {LastError()}");
            if (FileNative.fsync(fd) != 0) throw new IOException($"cannot sync {path}: {LastError()}");
        }
        catch
        {
            System.IO.File.Delete(path);
            throw;
        }
    }

    /// <summary>
    /// Opens an image and loads its map. The map is validated; a corrupt image is refused (run check --repair)
    /// unless <paramref name="allowCorruptMap"/> (for check itself). Read-only opens never write the file.
    /// </summary>
    public static ImageFile Open(string path, bool readOnly, bool directIo, bool allowCorruptMap = false)
    {
        int flags = (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC | (directIo ? O_DIRECT : 0);
        int fd = open(path, flags, 0);
        if (fd < 0) throw new IOException($"cannot open {path}: {LastError()}");
        var owner = new OwnedFd(fd);
        byte* map = null;
        try
        {
            if (!TryLock(fd, readOnly, LockPatience)) throw new IOException($"{path} is in use by another process (locked)");
            var stat = StatFd(fd) ?? throw new IOException($"{path}: statx failed: {LastError()}");
            if (!stat.IsRegular) throw new ImageFormatException($"{path} is not a regular file");
            byte* headerBytes = (byte*)NativeMemory.AlignedAlloc(ImageHeader.Length, MapBlockSize);
            ImageHeader header;
            try
            {
                int read = PreadFully(fd, headerBytes, ImageHeader.Length, 0, path);
                header = ImageHeader.Read(new ReadOnlySpan<byte>(headerBytes, read), stat.Size);
            }
            finally
            {
                NativeMemory.AlignedFree(headerBytes);
            }
            map = (byte*)NativeMemory.AlignedAlloc((nuint)header.MapBytes, MapBlockSize);
            int mapRead = PreadFully(fd, map, checked((int)header.MapBytes), (long)header.MapOffset, path);
            new Span<byte>(map + mapRead, (int)header.MapBytes - mapRead).Clear();
            var image = new ImageFile(owner, path, header, map, readOnly);
            map = null;   // owned by the image from here on
            try
            {
                var problems = image.FindMapProblems(stat.Size, out _);
                if (problems.Count > 0 && !allowCorruptMap)
                    throw new ImageFormatException($"{path}: corrupt allocation map ({problems[0]}{(problems.Count > 1 ? $", and {problems.Count - 1} more" : "")}); run 'blktarget image check --repair'");
                image.BuildFreeSpace(stat.Size);
                return image;
            }
            catch
            {
                image.Dispose();
                throw;
            }
        }
        catch
        {
            if (map != null) NativeMemory.AlignedFree(map);
            owner.Dispose();
            throw;
        }
    }

    /// <summary>Largest physical cluster index a valid entry may hold (keeps offsets far from overflow).</summary>
    public ulong MaxPhysicalCluster => (1UL << 56) >> Header.ClusterShift;

    /// <summary>Describes every inconsistency of the map: invalid or duplicate physical clusters, garbage in
    /// the map's padding. <paramref name="duplicated"/> receives the physical clusters mapped more than once.</summary>
    internal List<string> FindMapProblems(ulong fileSize, out HashSet<ulong> duplicated)
    {
        var problems = new List<string>();
        duplicated = [];
        var seen = new Dictionary<ulong, ulong>();
        for (ulong v = 0; v < Header.MapEntries; v++)
        {
            ulong p = Entry(v);
            if (p == 0) continue;
            if (p < Header.FirstDataCluster || p > MaxPhysicalCluster)
                problems.Add($"virtual cluster {v} maps to invalid physical cluster {p}");
            else if (!seen.TryAdd(p, v))
            {
                problems.Add($"virtual clusters {seen[p]} and {v} both map to physical cluster {p}");
                duplicated.Add(p);
            }
        }
        for (ulong i = Header.MapEntries * 8; i < Header.MapBytes; i++)
            if (_map[i] != 0)
            {
                problems.Add("garbage after the last map entry");
                break;
            }
        return problems;
    }

    private void BuildFreeSpace(ulong fileSize)
    {
        ulong fileClusters = (fileSize + ClusterSize - 1) >> Header.ClusterShift;
        ulong highest = Header.FirstDataCluster - 1;
        var used = new HashSet<ulong>();
        for (ulong v = 0; v < Header.MapEntries; v++)
        {
            ulong p = Entry(v);
            if (p == 0) continue;
            used.Add(p);
            if (p > highest) highest = p;
        }
        _nextAppend = Math.Max(Math.Max(highest + 1, fileClusters), Header.FirstDataCluster);
        for (ulong p = _nextAppend; p-- > Header.FirstDataCluster;)
            if (!used.Contains(p)) _free.Push(p);
    }

    public ulong FreeClusters => (ulong)_free.Count;

    /// <summary>
    /// Maps virtual cluster <paramref name="virtualCluster"/> to a physical cluster that reads as zeros, and writes
    /// the map block. Caller holds <see cref="MetadataLock"/>. Returns the (possibly already existing) entry.
    /// </summary>
    public ulong Allocate(ulong virtualCluster)
    {
        ulong existing = Entry(virtualCluster);
        if (existing != 0) return existing;
        ulong physical;
        if (_free.TryPop(out physical))
        {
            // A reused cluster may still hold old data (e.g. a discard whose hole punch was lost in a crash).
            if (fallocate(Fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (long)(physical << Header.ClusterShift), (long)ClusterSize) != 0)
            {
                string error = LastError();
                _free.Push(physical);
                throw new IOException($"{Path}: cannot clear cluster {physical} for reuse: {error}");
            }
        }
        else
        {
            physical = _nextAppend++;
        }
        SetEntry(virtualCluster, physical);
        try
        {
            WriteMapBlock(virtualCluster);
        }
        catch
        {
            SetEntry(virtualCluster, 0);
            _free.Push(physical);
            throw;
        }
        return physical;
    }

    /// <summary>
    /// Unmaps virtual clusters [first, first+count) and punches their data out. Caller holds
    /// <see cref="MetadataLock"/>. The physical clusters become reusable only after the next flush.
    /// </summary>
    public void Deallocate(ulong first, ulong count)
    {
        ulong end = first + count;
        var freed = new List<ulong>();
        for (ulong v = first; v < end; v++)
        {
            ulong p = Entry(v);
            if (p == 0) continue;
            SetEntry(v, 0);
            freed.Add(p);
        }
        if (freed.Count == 0) return;
        for (ulong block = first / EntriesPerBlock; block <= (end - 1) / EntriesPerBlock; block++) WriteMapBlock(block * EntriesPerBlock);
        foreach (ulong p in freed)
            fallocate(Fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (long)(p << Header.ClusterShift), (long)ClusterSize);
        _freeAfterFlush.AddRange(freed);
    }

    /// <summary>Number of clusters waiting for a flush before they can be reused.</summary>
    public int PendingFreeCount => _freeAfterFlush.Count;

    /// <summary>After a flush that began when <paramref name="pendingAtFlushStart"/> clusters were pending, those
    /// clusters' unmapping is durable: make them reusable. Caller holds <see cref="MetadataLock"/>.</summary>
    public void FlushCompleted(int pendingAtFlushStart)
    {
        int n = Math.Min(pendingAtFlushStart, _freeAfterFlush.Count);
        for (int i = 0; i < n; i++) _free.Push(_freeAfterFlush[i]);
        _freeAfterFlush.RemoveRange(0, n);
    }

    private void SetEntry(ulong virtualCluster, ulong physical) => Volatile.Write(ref ((ulong*)_map)[virtualCluster], physical);

    private void WriteMapBlock(ulong virtualCluster)
    {
        ulong blockOffset = virtualCluster * 8 / MapBlockSize * MapBlockSize;
        PwriteFully(Fd, _map + blockOffset, MapBlockSize, (long)(Header.MapOffset + blockOffset), Path);
    }

    /// <summary>Writes the whole map (repair), then syncs.</summary>
    internal void RewriteMap()
    {
        PwriteFully(Fd, _map, (int)Header.MapBytes, (long)Header.MapOffset, Path);
        Sync();
    }

    internal void ClearEntry(ulong virtualCluster) => SetEntry(virtualCluster, 0);

    /// <summary>Makes everything written so far durable (fsync: also the holes punched on deallocation).</summary>
    public void Sync()
    {
        if (FileNative.fsync(Fd) != 0) throw new IOException($"{Path}: fsync failed: {LastError()}");
    }

    private bool _disposed;

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _fd.Dispose();
        NativeMemory.AlignedFree(_map);
    }
}
