using BlkTarget.Storage.Interop;
using BlkTarget.Storage.Transfer;
using Microsoft.Win32.SafeHandles;

namespace BlkTarget.Storage.Tests.Concurrency;

/// <summary>
/// Records every change the image backend makes to its file (through the <see cref="IMediumRecorder"/> seam), on
/// the ledger's logical clock, and builds the file a power loss at any moment could leave behind: every change
/// made before a completed sync started (and every synchronous write) is there; of the others, any subset, each
/// write torn at 4 KiB pages.
/// </summary>
internal sealed unsafe class MediumLog(StampLedger ledger) : IMediumRecorder
{
    private const int Page = 4096;

    private enum Kind : byte { Write, Punch, Resize, SyncStart, SyncEnd }

    private readonly record struct Change(long Tick, Kind Kind, ulong Offset, ulong Length, byte[]? Data, bool Durable, long SyncStartTick);

    private readonly List<Change> _changes = [];
    private readonly Lock _lock = new();

    public int Count => _changes.Count;

    /// <summary>The logical times of the recorded changes, in order: the moments between which a crash can fall.</summary>
    public List<long> Ticks()
    {
        lock (_lock) return _changes.Select(c => c.Tick).Order().ToList();
    }

    public void Wrote(ulong fileOffset, IoVec* iov, int iovCount, ulong length, bool durable)
    {
        var data = new byte[length];
        ulong copied = 0;
        for (int i = 0; i < iovCount && copied < length; i++)
        {
            ulong n = Math.Min(iov[i].Length, length - copied);
            new ReadOnlySpan<byte>(iov[i].Base, (int)n).CopyTo(data.AsSpan((int)copied));
            copied += n;
        }
        Add(Kind.Write, fileOffset, length, data, durable);
    }

    public void Punched(ulong fileOffset, ulong length) => Add(Kind.Punch, fileOffset, length, null, false);

    public void Resized(ulong size) => Add(Kind.Resize, size, 0, null, false);

    public long SyncStarted() => Add(Kind.SyncStart, 0, 0, null, false);

    public void SyncCompleted(long token)
    {
        lock (_lock) _changes.Add(new Change(ledger.Tick(), Kind.SyncEnd, 0, 0, null, false, token));
    }

    private long Add(Kind kind, ulong offset, ulong length, byte[]? data, bool durable)
    {
        lock (_lock)
        {
            long tick = ledger.Tick();
            _changes.Add(new Change(tick, kind, offset, length, data, durable, 0));
            return tick;
        }
    }

    /// <summary>
    /// Writes to <paramref name="path"/> (a copy of the file as it was when recording began) what a power loss at
    /// logical time <paramref name="crash"/> may leave: returns how many changes were optional and how many of
    /// them were kept. <paramref name="processKilled"/>: a kill -9 instead, which loses nothing the process had
    /// handed to the kernel (every change up to the crash is there, none torn).
    /// </summary>
    public (int Optional, int Kept) BuildCrashImage(string path, long crash, Random random, bool processKilled = false)
    {
        var changes = _changes.OrderBy(c => c.Tick).Where(c => c.Tick <= crash).ToList();
        long syncedBefore = 0;   // changes logged before this tick were covered by a completed sync
        foreach (var c in changes)
            if (c.Kind == Kind.SyncEnd) syncedBefore = Math.Max(syncedBefore, c.SyncStartTick);
        int optional = 0, kept = 0;
        using var file = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite);
        foreach (var c in changes)
        {
            bool mandatory = processKilled || c.Tick < syncedBefore || (c.Kind == Kind.Write && c.Durable);
            switch (c.Kind)
            {
                case Kind.Write:
                    for (ulong page = 0; page < c.Length; page += Page)
                    {
                        if (!mandatory)
                        {
                            optional++;
                            if (random.Next(2) == 0) continue;
                            kept++;
                        }
                        int n = (int)Math.Min(Page, c.Length - page);
                        RandomAccess.Write(file, c.Data.AsSpan((int)page, n), (long)(c.Offset + page));
                    }
                    break;
                case Kind.Punch:
                    if (!mandatory && Skip(random, ref optional, ref kept)) break;
                    Punch(file, c.Offset, c.Length);
                    break;
                case Kind.Resize:
                    if (!mandatory && Skip(random, ref optional, ref kept)) break;
                    if ((long)c.Offset > RandomAccess.GetLength(file)) RandomAccess.SetLength(file, (long)c.Offset);
                    break;
            }
        }
        return (optional, kept);
    }

    private static bool Skip(Random random, ref int optional, ref int kept)
    {
        optional++;
        if (random.Next(2) == 0) return true;
        kept++;
        return false;
    }

    private static void Punch(SafeFileHandle file, ulong offset, ulong length)
    {
        int fd = (int)file.DangerousGetHandle();
        if (FileNative.fallocate(fd, FileNative.FALLOC_FL_PUNCH_HOLE | FileNative.FALLOC_FL_KEEP_SIZE, (long)offset, (long)length) != 0)
            throw new IOException($"punch failed: {FileNative.LastError()}");
    }
}
