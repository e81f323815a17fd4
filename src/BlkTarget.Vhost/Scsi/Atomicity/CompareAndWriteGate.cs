using System.Numerics;

namespace BlkTarget.Vhost.Scsi.Atomicity;

/// <summary>
/// Makes COMPARE AND WRITE (SBC-3 5.2) atomic against every other write to an overlapping range of one disk, on
/// every queue of every export that names the disk (one gate per <see cref="SharedLogicalUnit"/>). No lock and no
/// allocation on any path; a write pays one interlocked update of its own queue's counter and one volatile read of
/// the gate's state while no COMPARE AND WRITE runs.
/// <para>
/// <b>State.</b> Up to <see cref="MaxHolders"/> COMPARE AND WRITEs hold a range at once. <c>_state</c> is one
/// 64-bit word: bits 0-15 say which holder slots are held, bits 16-63 a version that every change increments. A
/// slot's range is written while the slot is reserved (<c>_reserved</c>) but not held, and is not changed while it
/// is held. Writers read <c>_state</c> once: zero holders is the whole fast path.
/// </para>
/// <para>
/// <b>COMPARE AND WRITE against COMPARE AND WRITE.</b> <see cref="TryHold"/> reads the state, checks the held
/// slots' ranges, and sets its own bit with a compare-and-swap of the whole word. Any hold or release between the
/// read and the swap changed the version, so the swap fails and the check is repeated: a hold succeeds only if no
/// overlapping range was held at the instant of the swap (linearizable), and overlapping holds never coexist.
/// </para>
/// <para>
/// <b>Writes against COMPARE AND WRITE.</b> A write command W on queue Q does (<see cref="WriteTracker.Begin"/>,
/// then <see cref="Blocks"/>): store its sequence number in Q's tracker, full fence, read <c>_state</c> (then the
/// held ranges); on an overlap it ends its entry again and is deferred (retried on a later poll, never blocking).
/// A COMPARE AND WRITE C does: write its range, set its bit by compare-and-swap (a full fence), read the list of
/// trackers and each one's <see cref="WriteTracker.Started"/>, and before it reads the medium waits until every
/// write with a lower sequence number has ended (<see cref="WriteDrain"/>). This is the store-buffering pattern
/// with a full fence on both sides, so W's read of the state and C's read of Q's counter cannot both miss the
/// other's write: either W sees C's bit (and C's range, written before the swap W's read observes) and defers, or
/// C sees W's sequence number and waits for W to complete. Writes that begin after C's bit is visible see it. So
/// while C reads, compares and writes, no overlapping write is in flight or starts. A tracker registered after C
/// read the list belongs to a queue whose registration (<see cref="Register"/>, a full fence) came after C's read
/// of the list, so by the same argument every write of that queue sees C's bit. Torn reads of a slot that was
/// released and reused after W read the state do not matter: that slot's new holder swapped after W's read, so it
/// sees W's sequence number.
/// </para>
/// </summary>
public sealed class CompareAndWriteGate
{
    /// <summary>COMPARE AND WRITEs that may hold a range of the disk at once; more wait (retried on poll).</summary>
    public const int MaxHolders = 16;
    private const long HeldMask = (1L << MaxHolders) - 1;
    private const long VersionUnit = 1L << MaxHolders;

    private long _state;
    private readonly int[] _reserved = new int[MaxHolders];
    private readonly long[] _first = new long[MaxHolders];
    private readonly long[] _end = new long[MaxHolders];
    private readonly object _registration = new();
    private WriteTracker[] _trackers = [];

    /// <summary>How many COMPARE AND WRITEs hold a range now (for tests and diagnostics).</summary>
    public int Holders => BitOperations.PopCount((ulong)(Volatile.Read(ref _state) & HeldMask));

    /// <summary>The trackers of every queue that may write to this disk (read after a hold, see the type's proof).</summary>
    public WriteTracker[] Trackers => Volatile.Read(ref _trackers);

    /// <summary>Management or reactor thread, before the queue owning <paramref name="tracker"/> first writes to this
    /// disk: its writes take part from now on. Idempotent; allocates (once per queue and disk).</summary>
    public void Register(WriteTracker tracker)
    {
        lock (_registration)
        {
            if (Array.IndexOf(_trackers, tracker) >= 0) return;
            Interlocked.Exchange(ref _trackers, [.. _trackers, tracker]);
        }
    }

    /// <summary>The queue owning <paramref name="tracker"/> stopped, with nothing in flight.</summary>
    public void Unregister(WriteTracker tracker)
    {
        lock (_registration)
        {
            if (Array.IndexOf(_trackers, tracker) < 0) return;
            Interlocked.Exchange(ref _trackers, [.. _trackers.Where(t => t != tracker)]);
        }
    }

    /// <summary>
    /// A write command that has begun (<see cref="WriteTracker.Begin"/>, whose fence orders this read after it):
    /// whether a COMPARE AND WRITE holds a range overlapping [<paramref name="lba"/>, +<paramref name="blocks"/>),
    /// in which case the write must end its entry and wait. One volatile read when none is held.
    /// </summary>
    public bool Blocks(ulong lba, ulong blocks) => Overlaps(Volatile.Read(ref _state), lba, blocks);

    private bool Overlaps(long state, ulong lba, ulong blocks)
    {
        long held = state & HeldMask;
        while (held != 0)
        {
            int slot = BitOperations.TrailingZeroCount(held);
            held &= held - 1;
            long first = Volatile.Read(ref _first[slot]);
            if (new BlockRange((ulong)first, (ulong)(Volatile.Read(ref _end[slot]) - first)).Overlaps(lba, blocks)) return true;
        }
        return false;
    }

    /// <summary>
    /// Holds [<paramref name="lba"/>, +<paramref name="blocks"/>) for a COMPARE AND WRITE: returns the holder slot to
    /// pass to <see cref="Release"/>, or -1 when an overlapping range is held or every slot is taken (try again on a
    /// later poll). After a hold, wait for the writes already in flight (<see cref="WriteDrain"/>) before reading.
    /// </summary>
    public int TryHold(ulong lba, ulong blocks)
    {
        int slot = -1;
        for (int i = 0; i < MaxHolders && slot < 0; i++)
            if (Interlocked.CompareExchange(ref _reserved[i], 1, 0) == 0) slot = i;
        if (slot < 0) return -1;
        Volatile.Write(ref _first[slot], (long)lba);
        Volatile.Write(ref _end[slot], (long)(lba + blocks));
        while (true)
        {
            long state = Volatile.Read(ref _state);
            if (Overlaps(state, lba, blocks))
            {
                Volatile.Write(ref _reserved[slot], 0);
                return -1;
            }
            long next = ((state & ~HeldMask) + VersionUnit) | (state & HeldMask) | (1L << slot);
            if (Interlocked.CompareExchange(ref _state, next, state) == state) return slot;
        }
    }

    /// <summary>Ends the hold <paramref name="slot"/> (from <see cref="TryHold"/>): deferred writes may go.</summary>
    public void Release(int slot)
    {
        while (true)
        {
            long state = Volatile.Read(ref _state);
            long next = ((state & ~HeldMask) + VersionUnit) | (state & HeldMask & ~(1L << slot));
            if (Interlocked.CompareExchange(ref _state, next, state) == state) break;
        }
        Volatile.Write(ref _reserved[slot], 0);
    }
}

/// <summary>
/// A COMPARE AND WRITE's wait, after its hold, for the write commands that began before it on every queue of the
/// disk (see <see cref="CompareAndWriteGate"/>): resumable from poll to poll, no allocation. A tracker's target is
/// read when the drain reaches it, which is no earlier than the hold, so it covers at least the writes that could
/// have missed the hold (later ones are waited for too, which costs time, not correctness).
/// </summary>
public struct WriteDrain
{
    private WriteTracker[]? _trackers;
    private int _tracker;
    private int _entry;
    private long _target;

    /// <summary>Starts the wait; call after <see cref="CompareAndWriteGate.TryHold"/> succeeded.</summary>
    public void Begin(CompareAndWriteGate gate)
    {
        _trackers = gate.Trackers;
        _tracker = 0;
        _entry = 0;
        _target = -1;
    }

    /// <summary>Whether every write that began before the hold has completed (checks only what it has not yet seen).</summary>
    public bool Finished()
    {
        var trackers = _trackers!;
        while (_tracker < trackers.Length)
        {
            if (_target < 0)
            {
                _target = trackers[_tracker].Started;
                _entry = 0;
            }
            if (!trackers[_tracker].EndedBefore(_target, ref _entry)) return false;
            _tracker++;
            _target = -1;
        }
        return true;
    }
}
