namespace BlkTarget.Vhost.Scsi.Atomicity;

/// <summary>
/// The write commands one request queue has let past the COMPARE AND WRITE gates and not yet completed (WRITE,
/// WRITE SAME, UNMAP), so that a COMPARE AND WRITE on any other queue can wait for those that overlap its range
/// before it reads (<see cref="CompareAndWriteGate"/> proves why that is enough). Written only by the owning
/// queue's reactor; read by any reactor running a COMPARE AND WRITE. One per queue, whatever the LUN; nothing here
/// allocates after construction.
/// </summary>
public sealed class WriteTracker
{
    /// <summary>An entry with no write command in it.</summary>
    public const long Idle = long.MaxValue;

    /// <summary>Per request slot (indexed by head descriptor): the sequence number of the write command in it, or
    /// <see cref="Idle"/>. A slot's value only ever goes Idle -> s -> Idle -> s' with s' &gt; s.</summary>
    private readonly long[] _entries;
    /// <summary>Sequence number the next write command gets; also how many have begun.</summary>
    private long _started;

    /// <param name="slots">Request slots of the queue (its ring size).</param>
    public WriteTracker(int slots)
    {
        _entries = new long[slots];
        Array.Fill(_entries, Idle);
    }

    /// <summary>Owner reactor: the write command in <paramref name="slot"/> begins. The entry is published before
    /// the counter, and the counter's interlocked update is a full fence: the caller's next read of a gate's state
    /// cannot be ordered before these writes (the store-load order the gate's proof needs).</summary>
    public void Begin(int slot)
    {
        long sequence = _started;
        Volatile.Write(ref _entries[slot], sequence);
        Interlocked.Exchange(ref _started, sequence + 1);
    }

    /// <summary>Owner reactor: the write command in <paramref name="slot"/> completed (or never reached the
    /// backend). Idempotent.</summary>
    public void End(int slot) => Volatile.Write(ref _entries[slot], Idle);

    /// <summary>Whether the command in <paramref name="slot"/> counts as a write in flight.</summary>
    public bool IsBegun(int slot) => Volatile.Read(ref _entries[slot]) != Idle;

    /// <summary>Any thread: how many write commands have begun (the sequence number the next one gets).</summary>
    public long Started => Volatile.Read(ref _started);

    /// <summary>
    /// Any thread: whether every write command with a sequence number below <paramref name="target"/> has ended,
    /// checking entries from <paramref name="entry"/> on and leaving it at the first that has not (so the caller
    /// resumes there on its next poll: an entry once seen at or above the target, or idle, never holds such a
    /// command again, because entries only grow between idles and <paramref name="target"/> was read from
    /// <see cref="Started"/>, after each of those commands had published its entry).
    /// </summary>
    public bool EndedBefore(long target, ref int entry)
    {
        for (; entry < _entries.Length; entry++)
            if (Volatile.Read(ref _entries[entry]) < target) return false;
        return true;
    }

    /// <summary>The queue is gone: no entry holds a command any more.</summary>
    public void EndAll()
    {
        for (int i = 0; i < _entries.Length; i++) End(i);
    }
}
