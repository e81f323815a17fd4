using System.Threading;

namespace BlkTarget.Vhost.Queues;

/// <summary>What <see cref="PackedInflightQueue.Recover"/> found: the chains still in flight, the ring descriptors
/// they occupy, and the used position the region committed.</summary>
public readonly record struct PackedRecovery(int Chains, uint Descriptors, ushort UsedIdx, bool UsedWrap);

/// <summary>
/// Inflight tracking for one packed virtqueue in its QueueRegionPacked (vhost-user specification, "Inflight I/O
/// tracking", packed layout; offsets in <see cref="InflightLayout"/>). The entries form a free list; each chain taken
/// from the ring occupies one entry per descriptor, taken from free_head in order and holding a copy of that
/// descriptor (so a resubmission does not depend on ring slots the device has since overwritten with used
/// descriptors); the first entry is the chain's head (inflight, counter, num, last).
/// <list type="bullet">
/// <item><see cref="MarkInflight"/> when a chain is taken: head entry num = 0, counter, inflight = 1; every descriptor
/// copied into the entry at free_head, free_head = next; head.last / head.num; then old_free_head = free_head.</item>
/// <item><see cref="BeginUsed"/> before the used descriptor's flags are written: desc[last].next = free_head,
/// free_head = head, used_idx and used_wrap_counter advanced; <see cref="CommitUsed"/> after: head.inflight = 0, then
/// old_free_head, old_used_idx, old_used_wrap_counter = the new values.</item>
/// <item><see cref="Recover"/> in the next process: commit the last used update if the ring shows it was published
/// (the descriptor at old_used_idx no longer carries the avail flags of old_used_wrap_counter), otherwise roll it
/// back; clear inflight on free entries; resubmit the remaining heads in counter order.</item>
/// </list>
/// One reactor thread; no lock, no allocation after construction. The free list, the chains' shapes and the buffer
/// IDs are kept privately: the region is written on the request path but only read, range-checked, in Recover.
/// </summary>
public sealed unsafe class PackedInflightQueue
{
    private const ushort EndOfList = ushort.MaxValue;
    private readonly byte* _region;
    private readonly uint _size;
    private readonly ushort[] _next;
    private readonly ushort[] _last;
    private readonly ushort[] _num;
    /// <summary>Head entry of each buffer ID in flight.</summary>
    private readonly ushort[] _headOfId;
    private readonly ushort[] _resubmit;
    private readonly bool[] _claimed;
    private int _resubmitCount;
    private int _resubmitNext;
    private ushort _freeHead;
    private ulong _counter;

    /// <param name="queueRegion">Start of this queue's region, at least <see cref="InflightLayout.PackedQueueRegionBytes"/>
    /// bytes the caller keeps mapped for the lifetime of this object.</param>
    /// <param name="queueSize">The ring's size (SET_VRING_NUM).</param>
    public PackedInflightQueue(byte* queueRegion, uint queueSize)
    {
        if (!PackedRingLayout.IsValidSize(queueSize)) throw new ArgumentException($"invalid queue size {queueSize}", nameof(queueSize));
        _region = queueRegion;
        _size = queueSize;
        _next = new ushort[queueSize];
        _last = new ushort[queueSize];
        _num = new ushort[queueSize];
        _headOfId = new ushort[queueSize];
        _resubmit = new ushort[queueSize];
        _claimed = new bool[queueSize];
    }

    public int PendingResubmits => _resubmitCount - _resubmitNext;
    public int RecoveredInflight => _resubmitCount;
    public ulong NextCounter => _counter;

    private byte* Entry(uint index) => _region + InflightLayout.PackedHeaderBytes + (nuint)index * InflightLayout.PackedDescStateBytes;
    private ushort* Header(int offset) => (ushort*)(_region + offset);

    /// <summary>
    /// Reads the region before the ring starts. version 0, or nothing in flight: the region is (re)initialised empty at
    /// the ring's used position (<paramref name="usedIdx"/>, <paramref name="usedWrap"/>) and <paramref name="found"/>
    /// says 0 chains. Otherwise version must be 1 and desc_num the queue size; the last used update is committed or rolled
    /// back (see the class summary, <paramref name="ring"/> is the descriptor ring), each head still in flight must have
    /// a chain of 1..size entries linked by next that no other chain or the free list uses, and its last entry a buffer ID
    /// below the size that no other chain has; the free list is rebuilt from every other entry.
    /// </summary>
    /// <returns>Null on success, else why the region cannot be used.</returns>
    public string? Recover(PackedDescriptor* ring, ushort usedIdx, bool usedWrap, out PackedRecovery found)
    {
        found = default;
        _resubmitCount = 0;
        _resubmitNext = 0;
        Array.Clear(_claimed);
        ushort version = Volatile.Read(ref *Header(InflightLayout.VersionOffset));
        if (version != 0 && version != InflightLayout.Version) return $"inflight region version {version}, expected {InflightLayout.Version}";
        if (version != 0 && *Header(InflightLayout.DescNumOffset) != _size)
            return $"inflight region for {*Header(InflightLayout.DescNumOffset)} descriptors, queue size is {_size}";
        if (version == 0 || !AnyInflight())
        {
            Initialise(usedIdx, usedWrap);
            return null;
        }

        ushort freeHead = *Header(InflightLayout.FreeHeadOffset), oldFreeHead = *Header(InflightLayout.OldFreeHeadOffset);
        ushort used = *Header(InflightLayout.PackedUsedIdxOffset), oldUsed = *Header(InflightLayout.OldUsedIdxOffset);
        byte wrap = *(_region + InflightLayout.UsedWrapCounterOffset), oldWrap = *(_region + InflightLayout.OldUsedWrapCounterOffset);
        if (used >= _size || oldUsed >= _size || wrap > 1 || oldWrap > 1) return $"inflight region used position {used}/{oldUsed} wrap {wrap}/{oldWrap} outside a ring of {_size}";
        if (used != oldUsed || wrap != oldWrap)
        {
            // The update in progress reached the guest if the descriptor it wrote no longer looks available.
            ushort flags = Volatile.Read(ref ring[oldUsed].Flags);
            ushort availFlags = oldWrap == 1 ? PackedRingLayout.FlagAvail : PackedRingLayout.FlagUsed;
            if ((flags & (PackedRingLayout.FlagAvail | PackedRingLayout.FlagUsed)) != availFlags)
            {
                oldFreeHead = freeHead;
                oldUsed = used;
                oldWrap = wrap;
            }
        }
        // Roll back whatever is not committed; free entries are not in flight.
        freeHead = oldFreeHead;
        for (uint i = 0, e = freeHead; e < _size && i < _size; i++, e = *(ushort*)(Entry(e) + InflightLayout.PackedNextOffset))
        {
            if (_claimed[e]) break;
            _claimed[e] = true;
            Volatile.Write(ref *Entry(e), (byte)0);
        }
        Array.Clear(_claimed);

        var heads = new (ulong Counter, ushort Head)[_size];
        var idSeen = new bool[_size];
        uint descriptors = 0;
        for (uint e = 0; e < _size; e++)
        {
            byte flag = Volatile.Read(ref *Entry(e));
            if (flag == 0) continue;
            if (flag != 1) return $"inflight flag {flag} at entry {e}";
            string? error = ClaimChain((ushort)e, idSeen);
            if (error is not null) return error;
            descriptors += _num[e];
            heads[_resubmitCount++] = (*(ulong*)(Entry(e) + InflightLayout.PackedCounterOffset), (ushort)e);
        }
        // Heads in flight may also sit in chains claimed later; a head claimed twice was refused by ClaimChain.
        if (descriptors > _size) return $"{descriptors} descriptors in flight, the ring holds {_size}";
        Array.Sort(heads, 0, _resubmitCount);
        for (int i = 0; i < _resubmitCount; i++) _resubmit[i] = heads[i].Head;
        _counter = _resubmitCount == 0 ? 0 : heads[_resubmitCount - 1].Counter + 1;
        RebuildFreeList();
        *Header(InflightLayout.PackedUsedIdxOffset) = oldUsed;
        *(_region + InflightLayout.UsedWrapCounterOffset) = oldWrap;
        *Header(InflightLayout.OldUsedIdxOffset) = oldUsed;
        *(_region + InflightLayout.OldUsedWrapCounterOffset) = oldWrap;
        found = new PackedRecovery(_resubmitCount, descriptors, oldUsed, oldWrap == 1);
        return null;
    }

    private bool AnyInflight()
    {
        for (uint e = 0; e < _size; e++)
            if (Volatile.Read(ref *Entry(e)) != 0) return true;
        return false;
    }

    private string? ClaimChain(ushort head, bool[] idSeen)
    {
        ushort num = *(ushort*)(Entry(head) + InflightLayout.PackedNumOffset);
        ushort last = *(ushort*)(Entry(head) + InflightLayout.PackedLastOffset);
        if (num == 0 || num > _size) return $"inflight chain at entry {head} has {num} descriptors";
        ushort e = head;
        for (int i = 0; i < num; i++)
        {
            if (e >= _size) return $"inflight chain at entry {head} links to entry {e}";
            if (_claimed[e]) return $"inflight chain at entry {head} reuses entry {e}";
            _claimed[e] = true;
            if (i == num - 1) break;
            ushort next = *(ushort*)(Entry(e) + InflightLayout.PackedNextOffset);
            _next[e] = next;
            e = next;
        }
        if (e != last) return $"inflight chain at entry {head} ends at entry {e}, its last says {last}";
        ushort id = *(ushort*)(Entry(last) + InflightLayout.PackedIdOffset);
        if (id >= _size || idSeen[id]) return $"inflight chain at entry {head} has buffer ID {id}, out of range or taken";
        idSeen[id] = true;
        _num[head] = num;
        _last[head] = last;
        _headOfId[id] = head;
        return null;
    }

    /// <summary>Every entry no chain in flight holds goes on the free list, in ascending order.</summary>
    private void RebuildFreeList()
    {
        ushort head = EndOfList;
        for (int e = (int)_size - 1; e >= 0; e--)
        {
            if (_claimed[e]) continue;
            _next[e] = head;
            *(ushort*)(Entry((uint)e) + InflightLayout.PackedNextOffset) = head == EndOfList ? (ushort)_size : head;
            head = (ushort)e;
        }
        _freeHead = head;
        ushort stored = head == EndOfList ? (ushort)_size : head;
        *Header(InflightLayout.FreeHeadOffset) = stored;
        *Header(InflightLayout.OldFreeHeadOffset) = stored;
    }

    private void Initialise(ushort usedIdx, bool usedWrap)
    {
        new Span<byte>(_region, (int)InflightLayout.PackedQueueRegionBytes(_size)).Clear();
        *Header(InflightLayout.DescNumOffset) = (ushort)_size;
        *Header(InflightLayout.PackedUsedIdxOffset) = usedIdx;
        *Header(InflightLayout.OldUsedIdxOffset) = usedIdx;
        *(_region + InflightLayout.UsedWrapCounterOffset) = usedWrap ? (byte)1 : (byte)0;
        *(_region + InflightLayout.OldUsedWrapCounterOffset) = usedWrap ? (byte)1 : (byte)0;
        Array.Clear(_claimed);
        RebuildFreeList();
        _counter = 0;
        Volatile.Write(ref *Header(InflightLayout.VersionOffset), InflightLayout.Version);
    }

    /// <summary>Copies the next chain to resubmit (counter order) into <paramref name="destination"/> (at least the
    /// queue size long) and returns its descriptor count; 0 once all were handed out.</summary>
    public int TakeResubmit(Span<PackedDescriptor> destination)
    {
        if (_resubmitNext == _resubmitCount) return 0;
        ushort head = _resubmit[_resubmitNext++];
        ushort e = head;
        for (int i = 0; i < _num[head]; i++)
        {
            byte* entry = Entry(e);
            destination[i] = new PackedDescriptor
            {
                Addr = *(ulong*)(entry + InflightLayout.PackedAddrOffset),
                Len = *(uint*)(entry + InflightLayout.PackedLenOffset),
                Id = *(ushort*)(entry + InflightLayout.PackedIdOffset),
                Flags = *(ushort*)(entry + InflightLayout.PackedFlagsOffset),
            };
            e = _next[e];
        }
        return _num[head];
    }

    /// <summary>Records a chain just taken from the ring (its descriptors as read, the last carrying the buffer ID).
    /// Ignored when the free list cannot hold it (the ring refuses such chains before).</summary>
    public void MarkInflight(ReadOnlySpan<PackedDescriptor> chain)
    {
        ushort head = _freeHead;
        if (head == EndOfList || chain.IsEmpty) return;
        byte* h = Entry(head);
        *(ushort*)(h + InflightLayout.PackedNumOffset) = 0;
        *(ulong*)(h + InflightLayout.PackedCounterOffset) = _counter++;
        Volatile.Write(ref *h, (byte)1);
        ushort e = head, last = head;
        for (int i = 0; i < chain.Length; i++)
        {
            if (e == EndOfList) return;
            byte* entry = Entry(e);
            *(ulong*)(entry + InflightLayout.PackedAddrOffset) = chain[i].Addr;
            *(uint*)(entry + InflightLayout.PackedLenOffset) = chain[i].Len;
            *(ushort*)(entry + InflightLayout.PackedIdOffset) = chain[i].Id;
            *(ushort*)(entry + InflightLayout.PackedFlagsOffset) = chain[i].Flags;
            last = e;
            e = _next[e];
        }
        *(ushort*)(h + InflightLayout.PackedLastOffset) = last;
        *(ushort*)(h + InflightLayout.PackedNumOffset) = (ushort)chain.Length;
        _freeHead = e;
        ushort stored = e == EndOfList ? (ushort)_size : e;
        *Header(InflightLayout.FreeHeadOffset) = stored;
        _num[head] = (ushort)chain.Length;
        _last[head] = last;
        _headOfId[chain[^1].Id % _size] = head;
        Volatile.Write(ref *Header(InflightLayout.OldFreeHeadOffset), stored);
    }

    /// <summary>Before the used descriptor of buffer <paramref name="id"/> is published at the used position that ends
    /// at (<paramref name="usedIdx"/>, <paramref name="usedWrap"/>): returns its entries to the free list and records
    /// the new used position.</summary>
    public void BeginUsed(ushort id, ushort usedIdx, bool usedWrap)
    {
        ushort head = _headOfId[id];
        ushort last = _last[head];
        _next[last] = _freeHead;
        *(ushort*)(Entry(last) + InflightLayout.PackedNextOffset) = _freeHead == EndOfList ? (ushort)_size : _freeHead;
        _freeHead = head;
        *Header(InflightLayout.FreeHeadOffset) = head;
        *Header(InflightLayout.PackedUsedIdxOffset) = usedIdx;
        Volatile.Write(ref *(_region + InflightLayout.UsedWrapCounterOffset), usedWrap ? (byte)1 : (byte)0);
    }

    /// <summary>After the used descriptor's flags were written: clears the head's inflight flag, then commits the free
    /// list head and used position (old_* fields).</summary>
    public void CommitUsed(ushort id)
    {
        ushort head = _headOfId[id];
        Volatile.Write(ref *Entry(head), (byte)0);
        *Header(InflightLayout.OldFreeHeadOffset) = head;
        *Header(InflightLayout.OldUsedIdxOffset) = *Header(InflightLayout.PackedUsedIdxOffset);
        Volatile.Write(ref *(_region + InflightLayout.OldUsedWrapCounterOffset), *(_region + InflightLayout.UsedWrapCounterOffset));
    }
}
