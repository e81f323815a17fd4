using System.Threading;

namespace BlkTarget.Vhost.Queues;

/// <summary>
/// Inflight tracking for one split virtqueue in its queue region of the shared inflight area (vhost-user
/// specification, "Inflight I/O tracking"; layout in <see cref="InflightLayout"/>). The ring calls it at three
/// points: <see cref="MarkInflight"/> when a head is taken from the avail ring (counter, then inflight = 1),
/// <see cref="AddToBatch"/> for every used element it writes (desc[head].next = last_batch_head,
/// last_batch_head = head), and <see cref="CommitBatch"/> right after it published used->idx (inflight = 0 for the
/// batch, then used_idx = used->idx). A process killed anywhere in between leaves a region that
/// <see cref="Recover"/> repairs in the next process: if used_idx differs from used->idx, the batch that starts at
/// last_batch_head was published and its flags are cleared; every head still in flight is then handed out again
/// by <see cref="TryTakeResubmit"/>, in counter (= avail) order, before the ring takes new avail entries.
/// <para>
/// One reactor thread; no lock, no allocation after construction. The frontend can write the region at any time:
/// the batch to clear is kept privately, every index read from the region is range-checked, and what the region
/// says is read only in <see cref="Recover"/>, never trusted on the request path.
/// </para>
/// </summary>
public sealed unsafe class SplitInflightQueue
{
    private readonly byte* _region;
    private readonly uint _size;
    /// <summary>Heads added to the current batch, in order; each head at most once.</summary>
    private readonly ushort[] _batch;
    private readonly bool[] _inBatch;
    /// <summary>Heads to submit again, sorted by counter; filled by <see cref="Recover"/>.</summary>
    private readonly ushort[] _resubmit;
    private int _batchCount;
    private int _resubmitCount;
    private int _resubmitNext;
    private ushort _lastBatchHead;
    private ulong _counter;

    /// <param name="queueRegion">Start of this queue's region: <see cref="InflightLayout.SplitQueueRegionBytes"/>
    /// bytes the caller keeps mapped for the lifetime of this object.</param>
    /// <param name="queueSize">The virtqueue's size (SET_VRING_NUM), a power of two up to 32768.</param>
    public SplitInflightQueue(byte* queueRegion, uint queueSize)
    {
        if (!SplitRingLayout.IsValidSize(queueSize)) throw new ArgumentException($"invalid queue size {queueSize}", nameof(queueSize));
        _region = queueRegion;
        _size = queueSize;
        _batch = new ushort[queueSize];
        _inBatch = new bool[queueSize];
        _resubmit = new ushort[queueSize];
    }

    /// <summary>Heads <see cref="Recover"/> found in flight that <see cref="TryTakeResubmit"/> has not handed out yet.</summary>
    public int PendingResubmits => _resubmitCount - _resubmitNext;

    /// <summary>How many heads <see cref="Recover"/> found in flight (after repairing the last batch).</summary>
    public int RecoveredInflight => _resubmitCount;

    /// <summary>The counter the next <see cref="MarkInflight"/> stores: above every counter found in flight.</summary>
    public ulong NextCounter => _counter;

    private byte* Desc(uint head) => _region + InflightLayout.SplitHeaderBytes + (nuint)head * InflightLayout.SplitDescStateBytes;
    private ushort* UsedIdxField => (ushort*)(_region + InflightLayout.UsedIdxOffset);
    private ushort* LastBatchHeadField => (ushort*)(_region + InflightLayout.LastBatchHeadOffset);

    /// <summary>
    /// Reads the region as the previous backend process (or QEMU's GET_INFLIGHT_FD) left it, before the ring
    /// starts. A region never initialised (version 0) is initialised empty. Otherwise: version must be 1 and
    /// desc_num the queue size; when used_idx differs from <paramref name="ringUsedIdx"/> (used->idx in guest
    /// memory) the last batch was published but not cleared, and its (used->idx - used_idx) entries, followed from
    /// last_batch_head through next, are cleared (unless nothing at all is in flight); then used_idx = used->idx. The heads whose inflight flag is still
    /// 1 are queued for resubmission in ascending counter order.
    /// </summary>
    /// <returns>Null on success, else why the region cannot be used (the queue must not start): a bad version or
    /// desc_num, a batch larger than the queue, an index out of range, an inflight flag other than 0 or 1.</returns>
    public string? Recover(ushort ringUsedIdx)
    {
        _batchCount = 0;
        Array.Clear(_inBatch);
        _resubmitCount = 0;
        _resubmitNext = 0;
        ushort version = Volatile.Read(ref *(ushort*)(_region + InflightLayout.VersionOffset));
        if (version == 0)
        {
            new Span<byte>(_region, (int)InflightLayout.SplitQueueRegionBytes(_size)).Clear();
            *(ushort*)(_region + InflightLayout.DescNumOffset) = (ushort)_size;
            *UsedIdxField = ringUsedIdx;
            Volatile.Write(ref *(ushort*)(_region + InflightLayout.VersionOffset), InflightLayout.Version);
            _counter = 0;
            _lastBatchHead = 0;
            return null;
        }
        if (version != InflightLayout.Version) return $"inflight region version {version}, expected {InflightLayout.Version}";
        // desc_num is a u16: a queue of 32768 fits, and a stored 0 cannot stand for 65536.
        ushort descNum = *(ushort*)(_region + InflightLayout.DescNumOffset);
        if (descNum != _size) return $"inflight region for {descNum} descriptors, queue size is {_size}";

        string? error = RepairLastBatch(ringUsedIdx);
        if (error is not null) return error;

        var found = new (ulong Counter, ushort Head)[_size];
        for (uint head = 0; head < _size; head++)
        {
            byte flag = Volatile.Read(ref *(Desc(head) + InflightLayout.DescInflightOffset));
            if (flag == 0) continue;
            if (flag != 1) return $"inflight flag {flag} at descriptor {head}";
            found[_resubmitCount++] = (*(ulong*)(Desc(head) + InflightLayout.DescCounterOffset), (ushort)head);
        }
        // By counter; ties (only a region the frontend wrote has them) by descriptor index.
        Array.Sort(found, 0, _resubmitCount);
        for (int i = 0; i < _resubmitCount; i++) _resubmit[i] = found[i].Head;
        _counter = _resubmitCount == 0 ? 0 : found[_resubmitCount - 1].Counter + 1;
        _lastBatchHead = *LastBatchHeadField;
        return null;
    }

    private string? RepairLastBatch(ushort ringUsedIdx)
    {
        ushort regionUsedIdx = Volatile.Read(ref *UsedIdxField);
        ushort batch = (ushort)(ringUsedIdx - regionUsedIdx);
        if (batch == 0) return null;
        if (!AnyInflight())
        {
            // Nothing to repair, whatever the indices say (e.g. a frontend that kept the area across a ring reset).
            Volatile.Write(ref *UsedIdxField, ringUsedIdx);
            return null;
        }
        if (batch > _size) return $"used->idx {ringUsedIdx} is {batch} entries past the region's used_idx {regionUsedIdx}, more than the queue holds";
        ushort head = *LastBatchHeadField;
        for (int i = 0; i < batch; i++)
        {
            if (head >= _size) return $"last batch lists descriptor {head}, queue size is {_size}";
            byte* desc = Desc(head);
            Volatile.Write(ref *(desc + InflightLayout.DescInflightOffset), (byte)0);
            head = *(ushort*)(desc + InflightLayout.DescNextOffset);
        }
        Volatile.Write(ref *UsedIdxField, ringUsedIdx);
        return null;
    }

    private bool AnyInflight()
    {
        for (uint head = 0; head < _size; head++)
            if (Volatile.Read(ref *(Desc(head) + InflightLayout.DescInflightOffset)) != 0) return true;
        return false;
    }

    /// <summary>The next head to submit again, in counter order; false once all were handed out.</summary>
    public bool TryTakeResubmit(out ushort head)
    {
        if (_resubmitNext == _resubmitCount)
        {
            head = 0;
            return false;
        }
        head = _resubmit[_resubmitNext++];
        return true;
    }

    /// <summary>Records that <paramref name="head"/> was taken from the avail ring: counter first, then the
    /// inflight flag (release), so a flag never stands next to a stale counter. Heads out of range are ignored
    /// (the chain walk refuses them).</summary>
    public void MarkInflight(ushort head)
    {
        if (head >= _size) return;
        byte* desc = Desc(head);
        *(ulong*)(desc + InflightLayout.DescCounterOffset) = _counter++;
        Volatile.Write(ref *(desc + InflightLayout.DescInflightOffset), (byte)1);
    }

    /// <summary>True when <paramref name="head"/> is already in the batch being built: the ring must publish (and
    /// <see cref="CommitBatch"/>) first, or the batch list would loop and lose entries.</summary>
    public bool InBatch(ushort head) => head < _size && _inBatch[head];

    /// <summary>Links <paramref name="head"/>, whose used element was just written, into the batch list
    /// (desc[head].next = last_batch_head; last_batch_head = head). Must precede the publish of used->idx.</summary>
    public void AddToBatch(ushort head)
    {
        if (head >= _size || _inBatch[head]) return;
        *(ushort*)(Desc(head) + InflightLayout.DescNextOffset) = _lastBatchHead;
        _lastBatchHead = head;
        *LastBatchHeadField = head;
        _inBatch[head] = true;
        _batch[_batchCount++] = head;
    }

    /// <summary>After used->idx = <paramref name="usedIdx"/> was published: clears the batch's inflight flags, then
    /// sets used_idx. Release stores, so neither moves before the publish nor used_idx before the flags.</summary>
    public void CommitBatch(ushort usedIdx)
    {
        for (int i = 0; i < _batchCount; i++)
        {
            ushort head = _batch[i];
            Volatile.Write(ref *(Desc(head) + InflightLayout.DescInflightOffset), (byte)0);
            _inBatch[head] = false;
        }
        _batchCount = 0;
        Volatile.Write(ref *UsedIdxField, usedIdx);
    }
}
