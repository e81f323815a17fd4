using System.Runtime.InteropServices;
using BlkTarget.Storage.Interop;
using static BlkTarget.Storage.Interop.FileNative;

namespace BlkTarget.Storage.Image;

/// <summary>
/// The file-level steps of growing an image's virtual size (<see cref="ImageGrowth"/> runs them in order;
/// docs/image-format.md, "Growing an image", argues why every crash between them is safe). The map lies right after
/// the header and data clusters follow it, so a larger map first needs the data clusters it will cover moved out
/// (<see cref="RelocateClusters"/>); then <see cref="CommitGrowth"/> turns that area into zeroed map and writes the
/// new header. Metadata thread only (or the tool that opened the image).
/// </summary>
public sealed unsafe partial class ImageFile
{
    /// <summary>Physical clusters below this are never handed out: the header, the map, and the area a growth in
    /// progress claims for the map.</summary>
    private ulong _reservedBelow;

    /// <summary>
    /// Claims the physical clusters <paramref name="grown"/>'s map will cover: from now on no allocation uses them
    /// (free ones leave the free list, deallocated ones never join it), and the in-memory map opens room for the new
    /// entries (zeros). Returns the virtual clusters whose data lies there, as (virtual, physical) in virtual order.
    /// </summary>
    internal List<(ulong Virtual, ulong Physical)> ReserveMapArea(ImageHeader grown)
    {
        ulong first = Header.FirstDataCluster, end = grown.FirstDataCluster;
        if (end > _reservedBelow)
        {
            _reservedBelow = end;
            var keep = _free.Where(p => p >= end).ToArray();   // pop order: lowest first
            _free.Clear();
            for (int i = keep.Length; i-- > 0;) _free.Push(keep[i]);
            _nextAppend = Math.Max(_nextAppend, end);
        }
        _mapMemory.Grow(grown.MapBytes);
        var owners = new List<(ulong, ulong)>();
        for (ulong v = 0; v < Header.MapEntries; v++)
        {
            ulong p = Entry(v);
            if (p >= first && p < end) owners.Add((v, p));
        }
        return owners;
    }

    /// <summary>
    /// Moves virtual clusters out of the physical clusters they occupy (those still mapped as listed; a cluster
    /// deallocated meanwhile is skipped). The caller keeps every request off these virtual clusters meanwhile
    /// (range locks). Each is copied into a fresh cluster (holes stay holes), the copies are synced, and only then
    /// do the entries name them: a crash before leaves the old entries and the untouched old clusters, after it
    /// the new entries and durable copies. The old clusters keep their data until <see cref="CommitGrowth"/> syncs
    /// the entries. <paramref name="buffer"/>: one cluster, 4 KiB aligned. Returns how many clusters moved.
    /// </summary>
    internal int RelocateClusters(IReadOnlyList<(ulong Virtual, ulong Physical)> moves, byte* buffer)
    {
        var moved = new List<(ulong Virtual, ulong From, ulong To)>();
        try
        {
            foreach (var (v, p) in moves)
            {
                if (Entry(v) != p) continue;
                ulong q = TakeFreshCluster();
                moved.Add((v, p, q));
                CopyCluster(p, q, buffer);
            }
            if (moved.Count == 0) return 0;
            Sync();
        }
        catch
        {
            // No entry names a copy yet: they are free again (punched before reuse).
            foreach (var (_, _, q) in moved) _free.Push(q);
            throw;
        }
        foreach (var (v, _, q) in moved) SetEntry(v, q);
        ulong lastBlock = ulong.MaxValue;
        try
        {
            foreach (var (v, _, _) in moved)
            {
                if (v / EntriesPerBlock == lastBlock) continue;
                lastBlock = v / EntriesPerBlock;
                WriteMapBlock(v);
            }
        }
        catch
        {
            // The disk may name the old cluster or the copy: both hold the data, and the old cluster is not cleared
            // unless the growth commits, which it now will not. Go on with the old ones; the copies are never
            // handed out again this session (a leak at worst).
            foreach (var (v, p, _) in moved) SetEntry(v, p);
            throw;
        }
        Interlocked.Increment(ref _version);
        return moved.Count;
    }

    /// <summary>Copies physical cluster <paramref name="from"/> into the hole <paramref name="to"/>, writing only the
    /// 4 KiB blocks that hold data.</summary>
    private void CopyCluster(ulong from, ulong to, byte* buffer)
    {
        int size = (int)ClusterSize;
        int read = PreadFully(Fd, buffer, size, (long)(from << Header.ClusterShift), Path);
        new Span<byte>(buffer + read, size - read).Clear();   // past the end of the file: zeros
        for (int offset = 0; offset < size;)
        {
            if (!new ReadOnlySpan<byte>(buffer + offset, MapBlockSize).ContainsAnyExcept((byte)0))
            {
                offset += MapBlockSize;
                continue;
            }
            int end = offset + MapBlockSize;
            while (end < size && new ReadOnlySpan<byte>(buffer + end, MapBlockSize).ContainsAnyExcept((byte)0)) end += MapBlockSize;
            WriteRecorded(buffer + offset, end - offset, (to << Header.ClusterShift) + (ulong)offset);
            offset = end;
        }
    }

    /// <summary>
    /// Makes <paramref name="grown"/> the image's layout, after every entry naming a cluster of its map area moved
    /// (<see cref="RelocateClusters"/>): syncs the moved entries (so the old clusters hold nothing anyone needs),
    /// punches the area and extends the file over it, syncs (the new map entries are durably zero), then writes the
    /// header and syncs. A crash before the header write leaves the old size, after it the new one.
    /// </summary>
    /// <exception cref="InvalidOperationException">an entry still names a cluster of the new map area (a bug: the
    /// growth stops before it could overwrite data).</exception>
    internal void CommitGrowth(ImageHeader grown)
    {
        var old = Header;
        if (grown.DataOffset > old.DataOffset)
        {
            for (ulong v = 0; v < old.MapEntries; v++)
            {
                ulong p = Entry(v);
                if (p != 0 && p < grown.FirstDataCluster)
                    throw new InvalidOperationException($"{Path}: virtual cluster {v} still lives in physical cluster {p}, inside the grown map area");
            }
            Sync();
            Punch(old.DataOffset, grown.DataOffset - old.DataOffset);
            if (_fileClusters < grown.FirstDataCluster) GrowFile(grown.FirstDataCluster);
            Sync();
        }
        byte* header = (byte*)NativeMemory.AlignedAlloc(ImageHeader.Length, MapBlockSize);
        try
        {
            grown.Write(new Span<byte>(header, ImageHeader.Length));
            WriteRecorded(header, ImageHeader.Length, 0);
        }
        finally
        {
            NativeMemory.AlignedFree(header);
        }
        Sync();
        _header = grown;
    }

    private void WriteRecorded(byte* data, int length, ulong fileOffset)
    {
        PwriteFully(Fd, data, length, (long)fileOffset, Path);
        if (Recorder is { } recorder)
        {
            var iov = new IoVec(data, (nuint)length);
            recorder.Wrote(fileOffset, &iov, 1, (ulong)length, durable: false);
        }
    }
}
