namespace BlkTarget.Storage.Network;

/// <summary>
/// Completions another thread reaped for a channel's slots, handed over without locks or allocation: any number of
/// threads <see cref="Post"/> (a slot's result, then the slot onto a lock-free stack), the owning reactor takes them
/// all at once with <see cref="TakeAll"/>. Taking the whole stack with one exchange leaves no ABA window; a slot has at
/// most one operation outstanding, so it is on the stack at most once. Allocated once per channel.
/// </summary>
internal sealed class CompletionInbox
{
    private const int Empty = -1;
    private readonly long[] _results;
    private readonly int[] _next;
    private int _head = Empty;

    /// <param name="slots">How many slots the channel has (slot numbers 0..slots-1).</param>
    public CompletionInbox(int slots)
    {
        _results = new long[slots];
        _next = new int[slots];
    }

    /// <summary>Records <paramref name="result"/> for <paramref name="slot"/> (any thread). True when the inbox was
    /// empty before: the owner may be asleep and must be woken.</summary>
    public bool Post(int slot, long result)
    {
        _results[slot] = result;
        while (true)
        {
            int head = Volatile.Read(ref _head);
            _next[slot] = head;
            if (Interlocked.CompareExchange(ref _head, slot, head) == head) return head == Empty;
        }
    }

    /// <summary>The first posted slot of a batch (-1: none); walk the batch with <see cref="Next"/>. Owner thread only.</summary>
    public int TakeAll() => Interlocked.Exchange(ref _head, Empty);

    /// <summary>The slot after <paramref name="slot"/> in the batch it was taken with (-1: end). Read it before the
    /// slot is reused.</summary>
    public int Next(int slot) => _next[slot];

    /// <summary>The result posted for <paramref name="slot"/>.</summary>
    public long Result(int slot) => _results[slot];
}
