using System.Threading;
using BlkTarget.Storage;
using BlkTarget.Vhost.Memory;

namespace BlkTarget.Vhost.Queues;

/// <summary>
/// The device side of one split virtqueue in guest memory: takes heads from the avail ring, writes used
/// elements, publishes used->idx and decides when the guest wants an interrupt. Owned by one reactor thread;
/// no locking. Memory ordering follows PROTOCOL-NOTES.md: acquire on avail->idx, release on used->idx, full
/// fences around notification decisions.
/// </summary>
public sealed unsafe class SplitRing : IVirtqueue
{
    private readonly ushort* _availFlags;
    private readonly ushort* _availIdx;
    private readonly ushort* _availRing;
    private readonly ushort* _usedEvent;
    private readonly ushort* _usedFlags;
    private readonly ushort* _usedIdx;
    private readonly VirtqUsedElement* _usedRing;
    private readonly ushort* _availEvent;
    private readonly uint _mask;
    private ushort _lastAvailIdx;
    private ushort _usedShadow;
    private ushort _lastSignalledUsed;
    private bool _signalledOnce;
    private SplitInflightQueue? _inflight;
    /// <summary>VHOST_VRING_F_LOG: the dirty log used-ring writes are marked in, or null; and the used ring's
    /// guest-physical address (log_guest_addr).</summary>
    private DirtyLog? _usedLog;
    private ulong _usedGuestAddr;

    public SplitRing(VirtqDescriptor* descriptors, byte* avail, byte* used, uint size, ushort lastAvailIdx, bool eventIdx)
    {
        if (!SplitRingLayout.IsValidSize(size)) throw new ArgumentException($"invalid queue size {size}");
        Descriptors = descriptors;
        Size = size;
        _mask = size - 1;
        EventIdx = eventIdx;
        _availFlags = (ushort*)avail;
        _availIdx = (ushort*)(avail + 2);
        _availRing = (ushort*)(avail + 4);
        _usedEvent = (ushort*)(avail + 4 + 2 * size);
        _usedFlags = (ushort*)used;
        _usedIdx = (ushort*)(used + 2);
        _usedRing = (VirtqUsedElement*)(used + 4);
        _availEvent = (ushort*)(used + 4 + 8 * size);
        _lastAvailIdx = lastAvailIdx;
        // used->idx belongs to the device; after a restart it continues from what the guest last saw.
        _usedShadow = Volatile.Read(ref *_usedIdx);
        _lastSignalledUsed = _usedShadow;
    }

    /// <summary>
    /// Locates the three ring parts through the frontend-virtual addresses of SET_VRING_ADDR; null when any part
    /// lies outside guest memory or is misaligned.
    /// </summary>
    public static SplitRing? Create(GuestMemory memory, ulong descUser, ulong availUser, ulong usedUser, uint size, ushort lastAvailIdx, bool eventIdx)
    {
        if (!SplitRingLayout.IsValidSize(size)) return null;
        if ((descUser & 15) != 0 || (availUser & 1) != 0 || (usedUser & 3) != 0) return null;
        var desc = memory.TranslateUserRange(descUser, SplitRingLayout.DescriptorTableBytes(size));
        var avail = memory.TranslateUserRange(availUser, SplitRingLayout.AvailRingBytes(size));
        var used = memory.TranslateUserRange(usedUser, SplitRingLayout.UsedRingBytes(size));
        if (desc == null || avail == null || used == null) return null;
        return new SplitRing((VirtqDescriptor*)desc, avail, used, size, lastAvailIdx, eventIdx);
    }

    public VirtqDescriptor* Descriptors { get; }
    public uint Size { get; }
    public bool EventIdx { get; }
    /// <summary>Next avail entry we will take: the value GET_VRING_BASE returns.</summary>
    public ushort LastAvailIdx => _lastAvailIdx;
    public uint VringBase => _lastAvailIdx;
    public ushort UsedIdx => _usedShadow;

    /// <summary>
    /// Tracks this ring's requests in <paramref name="inflight"/> from now on (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD).
    /// Call before the ring runs. Repairs the region's last batch against used->idx and queues the heads still in
    /// flight: they are taken again, in counter order, before any new avail entry. The avail position becomes
    /// used->idx + that count, whatever SET_VRING_BASE said: every entry taken before was either published (counted
    /// in used->idx) or is in flight. (QEMU 7.2 sends used->idx as the base after losing its backend, as it cannot
    /// ask GET_VRING_BASE.)
    /// </summary>
    /// <returns>Null, or why the region cannot be used (<see cref="SplitInflightQueue.Recover"/>).</returns>
    public string? TrackInflight(SplitInflightQueue inflight)
    {
        var error = inflight.Recover(_usedShadow);
        if (error is not null) return error;
        _inflight = inflight;
        _lastAvailIdx = (ushort)(_usedShadow + inflight.RecoveredInflight);
        return null;
    }

    /// <summary>
    /// Marks every later write into the used ring (elements, idx, flags, avail_event) in <paramref name="log"/> at
    /// <paramref name="usedGuestAddr"/> (SET_VRING_ADDR's log_guest_addr) plus its offset; null stops it. Call on the
    /// thread that owns the ring (before it runs, or on its reactor). Writes are marked after they are stored and, for
    /// elements, before the used index that publishes them.
    /// </summary>
    public void LogUsedRing(DirtyLog? log, ulong usedGuestAddr)
    {
        _usedLog = log;
        _usedGuestAddr = usedGuestAddr;
    }

    public enum PopResult { Empty, Popped, Corrupt }

    /// <summary>
    /// Takes the next head from the avail ring. Corrupt when the guest's avail->idx ran more than a queue
    /// ahead of us, which no correct driver does.
    /// </summary>
    public PopResult TryPop(out ushort head)
    {
        if (_inflight is { PendingResubmits: > 0 } resubmit && resubmit.TryTakeResubmit(out head)) return PopResult.Popped;
        ushort availIdx = Volatile.Read(ref *_availIdx);
        ushort pending = (ushort)(availIdx - _lastAvailIdx);
        if (pending == 0)
        {
            head = 0;
            return PopResult.Empty;
        }
        if (pending > Size)
        {
            head = 0;
            return PopResult.Corrupt;
        }
        head = _availRing[_lastAvailIdx & _mask];
        _lastAvailIdx++;
        // The driver wrote the next request's descriptor on its own CPU: ask for that line now, so the walk of that
        // chain finds it arriving. The entry read here is not trusted (masked into the table; the pop reads it again).
        if (pending > 1) PrefetchDescriptor(_availRing[_lastAvailIdx & _mask]);
        _inflight?.MarkInflight(head);
        return PopResult.Popped;
    }

    public PopStatus TryPopChain(GuestMemory memory, ref ChainBuffers chain, out ushort id, out string? error)
    {
        error = null;
        var result = TryPop(out id);
        if (result == PopResult.Empty) return PopStatus.Empty;
        if (result == PopResult.Corrupt)
        {
            error = "avail index ran more than a queue ahead";
            return PopStatus.Corrupt;
        }
        var chainError = DescriptorChainWalker.Walk(memory, Descriptors, Size, id, ref chain);
        if (chainError != ChainError.None)
        {
            error = $"descriptor chain at {id} refused: {chainError}";
            return PopStatus.Corrupt;
        }
        // Read and done with: the driver rewrites the head descriptor when it reuses the chain.
        CacheLines.Demote(Descriptors + id);
        return PopStatus.Popped;
    }

    public void PrefetchNext(ushort predictedId)
    {
        CacheLines.Prefetch(_availRing + (_lastAvailIdx & _mask));
        PrefetchDescriptor(predictedId);
    }

    /// <summary>Requests the line of descriptor <paramref name="id"/>, masked into the table (any value is safe).</summary>
    private void PrefetchDescriptor(ushort id) => CacheLines.Prefetch(Descriptors + (id & _mask));

    public bool HasPending => _inflight is { PendingResubmits: > 0 } || (ushort)(Volatile.Read(ref *_availIdx) - _lastAvailIdx) != 0;

    /// <summary>Writes one used element; the guest sees it only after <see cref="PublishUsed"/>.</summary>
    public void PushUsed(ushort id, uint len)
    {
        // A head returned twice before one publish (only a guest that reuses it blindly) would loop the inflight
        // batch list: publish the batch so far first.
        if (_inflight is { } inflight && inflight.InBatch(id)) PublishUsed();
        _usedRing[_usedShadow & _mask] = new VirtqUsedElement { Id = id, Len = len };
        _usedLog?.MarkGuest(_usedGuestAddr + 4 + 8 * (ulong)(_usedShadow & _mask), 8);
        _usedShadow++;
        _inflight?.AddToBatch(id);
    }

    /// <summary>Makes all pushed elements visible: release store of used->idx after the element writes (and the
    /// inflight batch links); with inflight tracking the batch's flags are cleared after it.</summary>
    public void PublishUsed()
    {
        Volatile.Write(ref *_usedIdx, _usedShadow);
        // The driver reads these two lines next, on its CPU: from the shared cache rather than by a hand-over from
        // this core's (QD1 4 KiB RAM reads: ~+10% together with the descriptor's and the status byte's demotes; see
        // bench/README.md).
        CacheLines.Demote(_usedIdx);
        CacheLines.Demote(&_usedRing[(ushort)(_usedShadow - 1) & _mask]);
        // After the store: a mark before it could be taken (and cleared) by the frontend before the page changed.
        _usedLog?.MarkGuest(_usedGuestAddr + 2, 2);
        _inflight?.CommitBatch(_usedShadow);
    }

    /// <summary>
    /// Decides whether the guest asked to be interrupted for the entries published since the last check
    /// (EVENT_IDX: vring_need_event; otherwise the NO_INTERRUPT flag). The first call after a (re)start
    /// always signals, as SPDK does, so a guest that missed an interrupt across a restart wakes up.
    /// </summary>
    public bool ShouldSignal()
    {
        Interlocked.MemoryBarrier();
        ushort newIdx = _usedShadow;
        ushort oldIdx = _lastSignalledUsed;
        bool signal;
        if (!_signalledOnce) signal = true;
        else if (EventIdx)
        {
            ushort eventIdx = Volatile.Read(ref *_usedEvent);
            signal = (ushort)(newIdx - eventIdx - 1) < (ushort)(newIdx - oldIdx);
        }
        else
        {
            signal = newIdx != oldIdx && (Volatile.Read(ref *_availFlags) & SplitRingLayout.AvailFlagNoInterrupt) == 0;
        }
        // "old" in vring_need_event is the used index at the previous check, signalled or not.
        _lastSignalledUsed = newIdx;
        _signalledOnce |= signal;
        return signal;
    }

    /// <summary>Asks the guest to kick us for new requests. Returns true if requests are already waiting
    /// (checked after a full fence), in which case the caller must not go to sleep.</summary>
    public bool EnableNotifications()
    {
        if (EventIdx) Volatile.Write(ref *_availEvent, _lastAvailIdx);
        else Volatile.Write(ref *_usedFlags, (ushort)0);
        _usedLog?.MarkGuest(_usedGuestAddr + (EventIdx ? 4 + 8 * (ulong)Size : 0), 2);
        Interlocked.MemoryBarrier();
        return HasPending;
    }

    /// <summary>Tells the guest not to kick while we are polling anyway.</summary>
    public void DisableNotifications()
    {
        // With EVENT_IDX, leaving avail_event behind already suppresses kicks.
        if (EventIdx) return;
        Volatile.Write(ref *_usedFlags, SplitRingLayout.UsedFlagNoNotify);
        _usedLog?.MarkGuest(_usedGuestAddr, 2);
    }
}
