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
/// <item>A deallocated cluster is reused only after an fsync that began after its unmapping was written completed
/// (<see cref="MetadataVersion"/> / <see cref="MarkDurable"/>), so no crash can leave two map entries pointing at
/// the same cluster, whatever order flushes complete in.</item>
/// <item>Each map update rewrites the 4 KiB map block holding the entry; an 8-byte entry never straddles a
/// sector, so a torn write leaves each entry either old or new.</item>
/// </list>
/// Metadata calls (allocation, deallocation, free-space bookkeeping) come from one thread at a time: the image's
/// <see cref="ImageMetadataWorker"/> while it is served, the tool using it otherwise. Reading entries, the
/// versions and <see cref="MarkDurable"/> are safe from any thread; data I/O needs no lock.
/// </summary>
public sealed unsafe partial class ImageFile : IDisposable
{
    public const int MapBlockSize = 4096;
    private const int EntriesPerBlock = MapBlockSize / 8;

    private readonly OwnedFd _fd;
    /// <summary>The in-memory map. A writable image reserves address space for the largest map this build loads,
    /// so growing the image (<see cref="ImageGrowth"/>) never moves it under readers on other threads.</summary>
    private readonly MappedMemory _mapMemory;
    private readonly byte* _map;
    private volatile ImageHeader _header;
    private readonly Stack<ulong> _free = new();
    /// <summary>Deallocated clusters with the metadata version that unmapped them, oldest first.</summary>
    private readonly Queue<(long Version, ulong Physical, long Ticks)> _freeAfterFlush = new();
    private ulong _nextAppend;
    private long _version;
    private long _durable;

    private ImageFile(OwnedFd fd, string path, ImageHeader header, MappedMemory map, bool readOnly)
    {
        _fd = fd;
        Path = path;
        _header = header;
        _mapMemory = map;
        _map = map.Pointer;
        ReadOnly = readOnly;
    }

    public string Path { get; }
    /// <summary>Test seam: sees every change made to the file (power-loss simulation). Set before serving.</summary>
    internal Transfer.IMediumRecorder? Recorder { get; set; }
    /// <summary>The header as on disk; replaced (never changed) when a growth commits. Any thread.</summary>
    public ImageHeader Header => _header;
    public bool ReadOnly { get; }
    internal int Fd => _fd.Fd;
    public ulong ClusterSize => Header.ClusterSize;

    /// <summary>Physical cluster of virtual cluster <paramref name="virtualCluster"/>, 0 when unallocated.
    /// Safe from any thread: entries are aligned 8-byte words.</summary>
    public ulong Entry(ulong virtualCluster) => Volatile.Read(ref ((ulong*)_map)[virtualCluster]);

    /// <summary>
    /// How many of the <paramref name="remaining"/> bytes from virtual <paramref name="offset"/> lie in one physical
    /// run: clusters all unallocated, or allocated back to back. Such a run is one read or write (or, unallocated,
    /// no I/O at all).
    /// </summary>
    public ulong MappedRunLength(ulong offset, ulong remaining) => MappedRunLength(offset, remaining, Entry(offset >> Header.ClusterShift));

    /// <summary>
    /// <see cref="MappedRunLength(ulong, ulong)"/> for a caller that already read the first cluster's entry
    /// (<paramref name="physical"/>): every entry is read once, so a concurrent allocation cannot make the run
    /// disagree with the entry the caller acts on.
    /// </summary>
    public ulong MappedRunLength(ulong offset, ulong remaining, ulong physical)
    {
        int shift = Header.ClusterShift;
        ulong first = offset >> shift;
        ulong run = Math.Min(ClusterSize - (offset & (ClusterSize - 1)), remaining);
        while (run < remaining)
        {
            ulong next = (offset + run) >> shift, nextPhysical = Entry(next);
            bool continues = physical == 0 ? nextPhysical == 0 : nextPhysical == physical + (next - first);
            if (!continues) break;
            run += Math.Min(ClusterSize, remaining - run);
        }
        return run;
    }

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
        CheckMapFits(header);
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
        MappedMemory? map = null;
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
            catch (ImageFormatException e)
            {
                throw new ImageFormatException($"{path}: {e.Message}");
            }
            finally
            {
                NativeMemory.AlignedFree(headerBytes);
            }
            CheckMapFits(header, path);
            map = MappedMemory.MapAnonymous(header.MapBytes, growthLimit: readOnly ? 0 : MaxMapBytes);
            int mapRead = PreadFully(fd, map.Pointer, checked((int)header.MapBytes), (long)header.MapOffset, path);
            new Span<byte>(map.Pointer + mapRead, (int)header.MapBytes - mapRead).Clear();
            var image = new ImageFile(owner, path, header, map, readOnly);
            map = null;   // owned by the image from here on
            try
            {
                var problems = image.FindMapProblems(stat.Size, out _);
                if (problems.Count > 0 && !allowCorruptMap)
                    throw new ImageFormatException($"{path}: corrupt allocation map ({problems[0]}{(problems.Count > 1 ? $", and {problems.Count - 1} more" : "")}); run 'blktarget image check --repair'");
                image.BuildFreeSpace(stat.Size);
                if (!readOnly && !allowCorruptMap) image.ClearFreeClusters();
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
            map?.Dispose();
            owner.Dispose();
            throw;
        }
    }

    /// <summary>Largest physical cluster index a valid entry may hold (keeps offsets far from overflow).</summary>
    public ulong MaxPhysicalCluster => (1UL << 56) >> Header.ClusterShift;

    /// <summary>Largest map this build loads into memory (1 GiB: 128 Mi clusters, 8 TiB of 64 KiB clusters).</summary>
    public const ulong MaxMapBytes = 1UL << 30;

    private static void CheckMapFits(ImageHeader header, string? path = null)
    {
        if (header.MapBytes > MaxMapBytes)
            throw new ImageFormatException($"{(path is null ? "" : path + ": ")}an allocation map of {header.MapBytes} bytes ({header.MapEntries} clusters) is larger than the {MaxMapBytes} bytes this build supports; use a larger cluster size");
    }

    /// <summary>Clusters a file of <paramref name="fileSize"/> bytes covers, the last one possibly in part.</summary>
    internal ulong FileClusters(ulong fileSize) => (fileSize + ClusterSize - 1) >> Header.ClusterShift;

    /// <summary>
    /// Whether a non-zero entry can be right: it names a data cluster (not the header or the map), and lies
    /// before <paramref name="fileClusters"/> + MapEntries. A healthy image maps clusters past the end of the
    /// file only for allocations whose data write a crash cut short (they read as zeros), and there are never
    /// more of those than entries; anything further out is corrupt (and would blow up the free list).
    /// </summary>
    internal bool IsPlausibleEntry(ulong physical, ulong fileClusters) =>
        physical >= Header.FirstDataCluster && physical <= MaxPhysicalCluster && physical < fileClusters + Header.MapEntries;

    /// <summary>Describes every inconsistency of the map: invalid or duplicate physical clusters, garbage in
    /// the map's padding. <paramref name="duplicated"/> receives the physical clusters mapped more than once.</summary>
    internal List<string> FindMapProblems(ulong fileSize, out HashSet<ulong> duplicated)
    {
        var problems = new List<string>();
        duplicated = [];
        var seen = new Dictionary<ulong, ulong>();
        ulong fileClusters = FileClusters(fileSize);
        for (ulong v = 0; v < Header.MapEntries; v++)
        {
            ulong p = Entry(v);
            if (p == 0) continue;
            if (!IsPlausibleEntry(p, fileClusters))
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
        ulong fileClusters = FileClusters(fileSize);
        ulong highest = Header.FirstDataCluster - 1;
        var used = new HashSet<ulong>();
        for (ulong v = 0; v < Header.MapEntries; v++)
        {
            ulong p = Entry(v);
            // Only an image opened for check can hold implausible entries; they must not size the free list.
            if (p == 0 || !IsPlausibleEntry(p, fileClusters)) continue;
            used.Add(p);
            if (p > highest) highest = p;
        }
        _nextAppend = Math.Max(Math.Max(highest + 1, fileClusters), Header.FirstDataCluster);
        _reservedBelow = Header.FirstDataCluster;
        _fileClusters = fileClusters;
        for (ulong p = _nextAppend; p-- > Header.FirstDataCluster;)
            if (!used.Contains(p)) _free.Push(p);
    }

    /// <summary>
    /// Punches every free cluster and syncs, before a writable image is served. A free cluster may still hold data
    /// (leaked by an earlier power loss); reusing it punches it again, but nothing orders that punch before the new
    /// map write, so a second power loss could keep the map write and lose the punch, showing the old data in
    /// another block. Punching now and syncing once makes every free cluster durably a hole first.
    /// </summary>
    private void ClearFreeClusters()
    {
        var free = _free.ToArray();
        Array.Sort(free);
        bool punched = false;
        for (int i = 0; i < free.Length;)
        {
            int j = i + 1;
            while (j < free.Length && free[j] == free[j - 1] + 1) j++;
            ulong offset = free[i] << Header.ClusterShift, length = (ulong)(j - i) << Header.ClusterShift;
            if (lseek(Fd, (long)offset, SEEK_DATA) is long data && data >= 0 && (ulong)data < offset + length)
            {
                Punch(offset, length);
                punched = true;
            }
            i = j;
        }
        if (punched) Sync();
    }

    /// <summary>Clusters free for reuse now: the free list and deallocated clusters whose unmapping is durable.</summary>
    public ulong FreeClusters
    {
        get
        {
            long durable = DurableVersion;
            ulong count = (ulong)_free.Count;
            foreach (var (version, _, _) in _freeAfterFlush) if (version <= durable) count++;
            return count;
        }
    }

    /// <summary>
    /// Allocates every unallocated cluster of [first, first+count) at once: appended clusters come out physically
    /// contiguous, so the write that needs them (and every later read of the range) is one I/O, and each touched
    /// map block is written once. Metadata thread only. Returns the entry of <paramref name="first"/>.
    /// </summary>
    public ulong AllocateRun(ulong first, ulong count)
    {
        AllocateRuns([(first, count)]);
        return Entry(first);
    }

    /// <summary>
    /// Allocates every unallocated cluster of every run (virtual cluster, count), in order, then writes each map
    /// block that changed once, adjacent blocks in one write (each 4 KiB block is still old or new after a crash,
    /// rule 3). All or nothing: on an error nothing stays allocated (clusters whose map block may have reached the
    /// disk are not handed out again this session) and the exception propagates. Metadata thread only.
    /// Why batches: the metadata worker takes every allocation that queued up while it wrote the last map blocks,
    /// so with N writes in flight into new clusters a map block is written about once per N of them, not N times
    /// (allocating 4 KiB / 128 KiB writes were 0.86x / 0.73x of qcow2 with one map write per request).
    /// </summary>
    /// <exception cref="IOException">the file could not be grown or a map block not written.</exception>
    public void AllocateRuns(ReadOnlySpan<(ulong First, ulong Count)> runs)
    {
        var assigned = new List<ulong>();
        var blocks = new List<ulong>();
        int attempted = 0;   // blocks[..attempted] were (or may have been) written
        try
        {
            foreach (var (first, count) in runs)
            {
                ulong end = Math.Min(first + count, Header.MapEntries);
                for (ulong v = first; v < end; v++)
                {
                    if (Entry(v) != 0) continue;
                    SetEntry(v, TakeFreshCluster());
                    assigned.Add(v);
                }
            }
            if (assigned.Count == 0) return;
            foreach (ulong v in assigned) blocks.Add(v / EntriesPerBlock);
            blocks.Sort();
            int distinct = 0;
            for (int i = 0; i < blocks.Count; i++)
                if (i == 0 || blocks[i] != blocks[distinct - 1]) blocks[distinct++] = blocks[i];
            blocks.RemoveRange(distinct, blocks.Count - distinct);
            for (int i = 0; i < blocks.Count;)
            {
                int j = i + 1;
                while (j < blocks.Count && blocks[j] == blocks[j - 1] + 1) j++;
                attempted = j;
                WriteMapBlocks(blocks[i], j - i);
                i = j;
            }
            Interlocked.Increment(ref _version);
        }
        catch
        {
            // Undo in memory. A cluster whose map block was written (or may be, in part: the failed write) can be
            // named on disk now, so it must never be handed out again this session: leave it out of the free
            // list (a leak at worst; it is a hole, and reopening the image finds it free or mapped as on disk).
            foreach (ulong v in assigned)
            {
                if (blocks.BinarySearch(0, attempted, v / EntriesPerBlock, null) < 0) _free.Push(Entry(v));
                SetEntry(v, 0);
            }
            throw;
        }
    }

    /// <summary>A physical cluster that reads as zeros: a free one punched clean, or a new one at the end of the file.</summary>
    private ulong TakeFreshCluster()
    {
        ReclaimDurablyFreed();
        if (_free.Count == 0 && _freeAfterFlush.TryPeek(out var oldest)
            && (_freeAfterFlush.Count >= ReclaimSyncClusters || Environment.TickCount64 - oldest.Ticks >= ReclaimSyncAfterMs))
        {
            // Deallocated clusters wait for an fsync, and a guest with its write cache off never flushes: once
            // enough of them waited long enough, sync here rather than grow the file forever. (Sooner would cost
            // an fsync per allocation after every discard; guests that flush reclaim them anyway.)
            Sync();
            ReclaimDurablyFreed();
        }
        if (_free.TryPop(out ulong physical))
        {
            // A reused cluster may still hold old data (e.g. a discard whose hole punch was lost in a crash).
            try
            {
                Punch(physical << Header.ClusterShift, ClusterSize);
            }
            catch (IOException e)
            {
                _free.Push(physical);
                throw new IOException($"{Path}: cannot clear cluster {physical} for reuse: {e.Message}", e);
            }
            return physical;
        }
        physical = _nextAppend++;
        // Extend the file before the map names the cluster, so that no crash leaves an entry past its end.
        if (physical >= _fileClusters) GrowFile(physical + 1);
        return physical;
    }

    /// <summary>
    /// Maps virtual cluster <paramref name="virtualCluster"/> to a physical cluster that reads as zeros, and writes
    /// the map block. Metadata thread only. Returns the (possibly already existing) entry.
    /// </summary>
    public ulong Allocate(ulong virtualCluster) => AllocateRun(virtualCluster, 1);

    /// <summary>
    /// Punches the data of virtual clusters [first, first+count) out, then unmaps them. Metadata thread only.
    /// Punching first means a crash in between leaves mapped holes (reading zeros, which is what the discard asked
    /// for) rather than unreferenced clusters full of data. The physical clusters become reusable once an fsync
    /// that started after this returned has completed (<see cref="MarkDurable"/>).
    /// </summary>
    public void Deallocate(ulong first, ulong count)
    {
        ulong end = Math.Min(first + count, Header.MapEntries);
        var freed = new List<(ulong Virtual, ulong Physical)>();
        for (ulong v = first; v < end; v++)
        {
            ulong p = Entry(v);
            if (p != 0) freed.Add((v, p));
        }
        if (freed.Count == 0) return;
        // One punch per physically contiguous run (a cluster run allocated by one write stays contiguous).
        for (int i = 0; i < freed.Count;)
        {
            int j = i + 1;
            while (j < freed.Count && freed[j].Physical == freed[j - 1].Physical + 1) j++;
            Punch(freed[i].Physical << Header.ClusterShift, (ulong)(j - i) << Header.ClusterShift);
            i = j;
        }
        foreach (var (v, _) in freed) SetEntry(v, 0);
        ulong lastBlock = ulong.MaxValue;
        foreach (var (v, _) in freed)
        {
            if (v / EntriesPerBlock == lastBlock) continue;
            lastBlock = v / EntriesPerBlock;
            WriteMapBlock(v);
        }
        long version = Interlocked.Increment(ref _version);
        long now = Environment.TickCount64;
        foreach (var (_, p) in freed) _freeAfterFlush.Enqueue((version, p, now));
    }

    /// <summary>
    /// DISCARD / WRITE_ZEROES of virtual bytes [offset, offset+length): whole clusters are deallocated (read as
    /// zeros, space returned), the allocated parts of partial clusters at either end are punched. Metadata thread only.
    /// </summary>
    public void DeallocateBytes(ulong offset, ulong length)
    {
        if (length == 0) return;
        int shift = Header.ClusterShift;
        ulong mask = ClusterSize - 1;
        ulong end = offset + length;
        ulong firstWhole = (offset + mask) >> shift;
        ulong endWhole = end >> shift;
        if (firstWhole > endWhole)
        {
            PunchWithinCluster(offset, length);   // inside one cluster
            return;
        }
        if (firstWhole < endWhole) Deallocate(firstWhole, endWhole - firstWhole);
        if ((offset & mask) != 0) PunchWithinCluster(offset, (firstWhole << shift) - offset);
        if ((end & mask) != 0) PunchWithinCluster(endWhole << shift, end - (endWhole << shift));
    }

    private void PunchWithinCluster(ulong offset, ulong length)
    {
        ulong physical = Entry(offset >> Header.ClusterShift);
        if (physical == 0 || length == 0) return;
        Punch((physical << Header.ClusterShift) + (offset & (ClusterSize - 1)), length);
    }

    private void Punch(ulong fileOffset, ulong length)
    {
        if (fallocate(Fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (long)fileOffset, (long)length) != 0)
            throw new IOException($"{Path}: cannot punch {length} bytes at {fileOffset}: {LastError()}");
        Recorder?.Punched(fileOffset, length);
    }

    /// <summary>How many clusters the file spans; appended clusters beyond it are created by <see cref="GrowFile"/>.</summary>
    private ulong _fileClusters;

    /// <summary>Extends the file (as a hole) to at least <paramref name="clusters"/> clusters, in steps of 1 MiB
    /// or more so that appending stays cheap.</summary>
    private void GrowFile(ulong clusters)
    {
        ulong step = Math.Max(1UL, (1UL << 20) >> Header.ClusterShift);
        ulong target = (clusters + step - 1) / step * step;
        if (ftruncate(Fd, (long)(target << Header.ClusterShift)) != 0)
            throw new IOException($"{Path}: cannot extend the image: {LastError()}");
        Recorder?.Resized(target << Header.ClusterShift);
        _fileClusters = target;
    }

    /// <summary>An allocation that finds no free cluster syncs to reclaim deallocated ones when this many wait…</summary>
    internal int ReclaimSyncClusters { get; set; } = 1024;

    /// <summary>…or when the oldest has waited this long (milliseconds) for a flush.</summary>
    internal long ReclaimSyncAfterMs { get; set; } = 2000;

    /// <summary>Count of completed metadata changes (allocations and deallocations whose map blocks were
    /// written). A flush reads it before its fsync starts: everything up to that version is covered.</summary>
    public long MetadataVersion => Volatile.Read(ref _version);

    /// <summary>Metadata changes up to this version are known durable.</summary>
    public long DurableVersion => Volatile.Read(ref _durable);

    /// <summary>
    /// An fsync that began when <see cref="MetadataVersion"/> was <paramref name="version"/> has completed: those
    /// changes are durable. Any thread, any order (a later flush completing first is fine: the maximum counts).
    /// </summary>
    public void MarkDurable(long version)
    {
        long seen = Volatile.Read(ref _durable);
        while (version > seen)
        {
            long actual = Interlocked.CompareExchange(ref _durable, version, seen);
            if (actual == seen) return;
            seen = actual;
        }
    }

    /// <summary>Moves deallocated clusters whose unmapping is durable to the free list.</summary>
    private void ReclaimDurablyFreed()
    {
        long durable = DurableVersion;
        while (_freeAfterFlush.TryPeek(out var pending) && pending.Version <= durable)
        {
            ulong physical = _freeAfterFlush.Dequeue().Physical;
            // A cluster a growth in progress gives to the map stays out: the map will cover it.
            if (physical >= _reservedBelow) _free.Push(physical);
        }
    }

    private void SetEntry(ulong virtualCluster, ulong physical) => Volatile.Write(ref ((ulong*)_map)[virtualCluster], physical);

    private void WriteMapBlock(ulong virtualCluster) => WriteMapBlocks(virtualCluster / EntriesPerBlock, 1);

    /// <summary>Writes map blocks [<paramref name="firstBlock"/>, +<paramref name="blockCount"/>) in one pwrite.</summary>
    private void WriteMapBlocks(ulong firstBlock, int blockCount)
    {
        ulong blockOffset = firstBlock * MapBlockSize;
        int length = blockCount * MapBlockSize;
        PwriteFully(Fd, _map + blockOffset, length, (long)(Header.MapOffset + blockOffset), Path);
        if (Recorder is { } recorder)
        {
            var iov = new IoVec(_map + blockOffset, (nuint)length);
            recorder.Wrote(Header.MapOffset + blockOffset, &iov, 1, (ulong)length, durable: false);
        }
    }

    /// <summary>Writes the whole map (repair), then syncs.</summary>
    internal void RewriteMap()
    {
        PwriteFully(Fd, _map, (int)Header.MapBytes, (long)Header.MapOffset, Path);
        Sync();
    }

    internal void ClearEntry(ulong virtualCluster) => SetEntry(virtualCluster, 0);

    /// <summary>Writes the map block holding <paramref name="virtualCluster"/>'s entry (repair; no sync).</summary>
    internal void RewriteMapBlock(ulong virtualCluster) => WriteMapBlock(virtualCluster);

    /// <summary>Whether the bytes between the last entry and the end of the map area are all zero.</summary>
    internal bool MapPaddingIsClean => new ReadOnlySpan<byte>(_map + Header.MapEntries * 8, (int)(Header.MapBytes - Header.MapEntries * 8)).IndexOfAnyExcept((byte)0) < 0;

    /// <summary>Zeroes the map's padding in memory (repair; <see cref="RewriteMap"/> persists it).</summary>
    internal void ClearMapPadding() => new Span<byte>(_map + Header.MapEntries * 8, (int)(Header.MapBytes - Header.MapEntries * 8)).Clear();

    /// <summary>
    /// Building a new image (convert, import): maps <paramref name="virtualCluster"/> to the next cluster at the
    /// end of the file without writing the map. Only for an image nobody else uses and that is deleted if the
    /// build fails: the map reaches the disk once, after the data, in <see cref="WriteBuiltMap"/>.
    /// </summary>
    internal ulong AppendCluster(ulong virtualCluster)
    {
        ulong existing = Entry(virtualCluster);
        if (existing != 0) return existing;
        ulong physical = _nextAppend++;
        SetEntry(virtualCluster, physical);
        return physical;
    }

    /// <summary>Writes the map blocks that hold at least one entry (the others stay holes), then syncs.</summary>
    internal void WriteBuiltMap()
    {
        for (ulong offset = 0; offset < Header.MapBytes; offset += MapBlockSize)
            if (new ReadOnlySpan<byte>(_map + offset, MapBlockSize).IndexOfAnyExcept((byte)0) >= 0)
                PwriteFully(Fd, _map + offset, MapBlockSize, (long)(Header.MapOffset + offset), Path);
        Sync();
    }

    /// <summary>Makes everything written so far durable (fsync: also the holes punched on deallocation).</summary>
    public void Sync()
    {
        long version = MetadataVersion;
        long token = Recorder?.SyncStarted() ?? 0;
        if (FileNative.fsync(Fd) != 0) throw new IOException($"{Path}: fsync failed: {LastError()}");
        Recorder?.SyncCompleted(token);
        MarkDurable(version);
    }

    private bool _disposed;

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _fd.Dispose();
        _mapMemory.Dispose();
    }
}
