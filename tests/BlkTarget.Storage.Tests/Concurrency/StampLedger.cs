using System.Buffers.Binary;

namespace BlkTarget.Storage.Tests.Concurrency;

/// <summary>
/// What a concurrent workload did to every 512-byte sector, and the rule a read must satisfy. Every write fills
/// each sector with a stamp (operation id, sector number, a pattern derived from both), so a read identifies
/// exactly which operation's data it returned, or that it returned zeros, or garbage / another sector's data.
/// Time is a logical clock: an operation's submit stamp is taken before it is submitted and its completion stamp
/// after its completion was observed, so "Y was submitted after X completed" is never claimed wrongly.
/// </summary>
internal sealed class StampLedger
{
    public const int SectorSize = 512;
    private const ulong Magic = 0x424C4B5453544D50;   // "BLKTSTMP"

    /// <summary>One operation that set a sector: a write (its id) or zeros (discard, write-zeroes; id 0 = initial).</summary>
    private readonly record struct Setter(long OpId, long Submitted, long Completed, bool Fua = false);

    private readonly List<Setter>[] _setters;
    private readonly List<(int Sector, long Observed, long Submitted, long Completed, string What)> _reads = [];
    private readonly List<(long Submitted, long Completed)> _flushes = [];
    private readonly Lock _lock = new();
    private long _clock;
    private long _nextOpId;

    public StampLedger(int sectors)
    {
        _setters = new List<Setter>[sectors];
        for (int i = 0; i < sectors; i++) _setters[i] = [new Setter(0, 0, 0)];
    }

    public long Tick() => Interlocked.Increment(ref _clock);
    public long NewOpId() => Interlocked.Increment(ref _nextOpId);

    /// <summary>Fills <paramref name="buffer"/> with the stamps operation <paramref name="opId"/> writes from sector <paramref name="firstSector"/> on.</summary>
    public static void Fill(Span<byte> buffer, long opId, long firstSector)
    {
        for (int s = 0; s < buffer.Length / SectorSize; s++)
        {
            var sector = buffer.Slice(s * SectorSize, SectorSize);
            long number = firstSector + s;
            BinaryPrimitives.WriteUInt64LittleEndian(sector, Magic);
            BinaryPrimitives.WriteInt64LittleEndian(sector[8..], opId);
            BinaryPrimitives.WriteInt64LittleEndian(sector[16..], number);
            ulong x = (ulong)opId * 0x9E3779B97F4A7C15 ^ (ulong)number;
            for (int i = 24; i < SectorSize; i += 8)
            {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                BinaryPrimitives.WriteUInt64LittleEndian(sector[i..], x);
            }
        }
    }

    /// <summary>A sector holding another sector's data: never acceptable.</summary>
    public const long Foreign = -1;
    /// <summary>A sector that is neither zeros nor one whole stamp: acceptable only for a read that raced a write
    /// of that sector (a buffered read may copy a page while a write is copying into it).</summary>
    public const long Torn = -2;

    /// <summary>Which operation's stamp a sector holds: 0 for all zeros, <see cref="Foreign"/> or <see cref="Torn"/>
    /// (with <paramref name="what"/>) for anything that is not a whole stamp of this very sector.</summary>
    public static long Identify(ReadOnlySpan<byte> sector, long number, out string what)
    {
        what = "";
        if (!sector.ContainsAnyExcept((byte)0)) return 0;
        long opId = BinaryPrimitives.ReadInt64LittleEndian(sector[8..]);
        long stamped = BinaryPrimitives.ReadInt64LittleEndian(sector[16..]);
        if (stamped != number && stamped != 0 && BinaryPrimitives.ReadUInt64LittleEndian(sector) == Magic)
        {
            what = $"the data of sector {stamped} (operation {opId}): it landed in another block";
            return Foreign;
        }
        if (BinaryPrimitives.ReadUInt64LittleEndian(sector) != Magic || opId <= 0 || stamped != number)
        {
            what = "neither zeros nor a whole stamp";
            return Torn;
        }
        Span<byte> expected = stackalloc byte[SectorSize];
        Fill(expected, opId, number);
        if (!expected.SequenceEqual(sector))
        {
            what = $"a torn or corrupted stamp of operation {opId}";
            return Torn;
        }
        return opId;
    }

    public void RecordSet(long opId, long firstSector, int sectors, long submitted, long completed, bool fua = false)
    {
        lock (_lock)
            for (int s = 0; s < sectors; s++) _setters[firstSector + s].Add(new Setter(opId, submitted, completed, fua));
    }

    public void RecordFlush(long submitted, long completed)
    {
        lock (_lock) _flushes.Add((submitted, completed));
    }

    /// <summary>The logical time now (no tick taken).</summary>
    public long Now => Volatile.Read(ref _clock);

    /// <summary>
    /// Checks a disk's contents after a simulated power loss at logical time <paramref name="crash"/>. An
    /// operation Y is durable when it was a FUA write that completed before the crash, or completed before a
    /// FLUSH was submitted that completed before the crash. Each sector must hold what some operation X set
    /// (zeros: the initial state or a zeroing operation), where X was submitted before the crash and no durable
    /// Y on that sector was submitted after X completed. So every flushed write is there (or something newer),
    /// nothing older than it, and nothing from another block.
    /// </summary>
    public List<string> CrashViolations(ReadOnlySpan<byte> disk, long crash, int max = 10)
    {
        long flushedBefore = 0;   // operations completed before this tick are covered by a completed flush
        foreach (var (submitted, completed) in _flushes)
            if (completed <= crash) flushedBefore = Math.Max(flushedBefore, submitted);
        var problems = new List<string>();
        for (int sector = 0; sector < _setters.Length && sector * SectorSize < disk.Length && problems.Count < max; sector++)
        {
            long observed = Identify(disk.Slice(sector * SectorSize, SectorSize), sector, out string what);
            if (observed < 0)
            {
                problems.Add($"sector {sector}: holds {what}");
                continue;
            }
            var setters = _setters[sector];
            bool Durable(Setter y) => (y.Fua && y.Completed <= crash) || y.Completed < flushedBefore;
            bool explained = false;
            foreach (var x in setters)
            {
                bool sameValue = observed == 0 ? IsZeroing(x) : x.OpId == observed;
                if (!sameValue || x.Submitted > crash) continue;
                if (!setters.Any(y => Durable(y) && y.Submitted > x.Completed))
                {
                    explained = true;
                    break;
                }
            }
            if (!explained)
                problems.Add($"sector {sector}: after a power loss at {crash} holds {(observed == 0 ? "zeros" : $"operation {observed}")}, but a durable later operation had replaced that (setters: {string.Join(", ", setters.TakeLast(6).Select(s => $"{(IsZeroing(s) ? "zero" : "w")}{s.OpId}[{s.Submitted},{s.Completed}{(s.Fua ? ",fua" : "")}]"))}; flushed before {flushedBefore})");
        }
        return problems;
    }

    public void RecordRead(ReadOnlySpan<byte> data, long firstSector, long submitted, long completed)
    {
        lock (_lock)
            for (int s = 0; s < data.Length / SectorSize; s++)
            {
                long number = firstSector + s;
                long observed = Identify(data.Slice(s * SectorSize, SectorSize), number, out string what);
                _reads.Add(((int)number, observed, submitted, completed, what));
            }
    }

    /// <summary>
    /// Checks every recorded read: it must have returned what one operation X on that sector set (zeros: the
    /// initial state or a zeroing operation), where X was submitted before the read completed, and no other
    /// operation on that sector was submitted after X completed and completed before the read was submitted.
    /// Returns the first violations.
    /// </summary>
    public List<string> Violations(int max = 10)
    {
        var problems = new List<string>();
        foreach (var read in _reads)
        {
            if (problems.Count >= max) break;
            var setters = _setters[read.Sector];
            if (read.Observed == Torn && setters.Any(y => y.OpId != 0 && y.Submitted < read.Completed && y.Completed > read.Submitted))
                continue;   // raced a write of this sector: any mix of old and new is what the guest asked for
            if (read.Observed < 0)
            {
                problems.Add($"sector {read.Sector}: read [{read.Submitted},{read.Completed}] returned {read.What}");
                continue;
            }
            bool explained = false;
            foreach (var x in setters)
            {
                bool sameValue = read.Observed == 0 ? IsZeroing(x) : x.OpId == read.Observed;
                if (!sameValue || x.Submitted >= read.Completed) continue;
                bool superseded = setters.Any(y => y.Submitted > x.Completed && y.Completed < read.Submitted);
                if (!superseded)
                {
                    explained = true;
                    break;
                }
            }
            if (!explained)
                problems.Add($"sector {read.Sector}: read [{read.Submitted},{read.Completed}] returned {(read.Observed == 0 ? "zeros" : $"operation {read.Observed}")}, which a later acknowledged operation had replaced (setters: {string.Join(", ", setters.TakeLast(6).Select(s => $"{(IsZeroing(s) ? "zero" : "w")}{s.OpId}[{s.Submitted},{s.Completed}]"))})");
        }
        return problems;
    }

    private readonly HashSet<long> _zeroing = [0];

    /// <summary>Registers <paramref name="opId"/> as an operation that sets sectors to zeros.</summary>
    public void MarkZeroing(long opId)
    {
        lock (_lock) _zeroing.Add(opId);
    }

    private bool IsZeroing(Setter s) => _zeroing.Contains(s.OpId);

    public int ReadCount => _reads.Count;
}
