using System.Threading;
using BlkTarget.Storage;
using BlkTarget.Vhost.Memory;

namespace BlkTarget.Vhost.Queues;

/// <summary>
/// The device side of one packed virtqueue (virtio 1.2, 2.8) in guest memory: a descriptor ring of
/// <see cref="Size"/> 16-byte <see cref="PackedDescriptor"/>s, the driver event suppression area (the driver's wishes
/// about interrupts) and the device event suppression area (ours about kicks). Chains are read at the avail position
/// while the descriptor's AVAIL/USED bits match the avail wrap counter; each chain is returned by one used
/// descriptor, written at the used position with the chain's buffer ID, that advances the used position by the
/// chain's descriptor count. Completion order is free (no in-order assumption): buffer IDs say which chain.
/// <para>
/// Memory ordering: a descriptor's flags are read with acquire semantics before the rest of it (then copied); a used
/// descriptor's id and len are written before its flags, which are a release store. Notification decisions sit
/// behind full fences, as on split rings. One reactor thread; no locking, no allocation after construction.
/// </para>
/// <para>
/// Hostile input stops the queue (<see cref="PopStatus.Corrupt"/> with the reason): a buffer ID not below the queue
/// size or already in flight, a chain longer than the ring or that runs into a descriptor not made available, more
/// descriptors in flight than the ring holds, and every chain rule of <see cref="PackedChainWalker"/>.
/// </para>
/// </summary>
public sealed unsafe class PackedRing : IVirtqueue
{
    private readonly PackedDescriptor* _ring;
    private readonly ushort* _driverOffWrap;
    private readonly ushort* _driverFlags;
    private readonly ushort* _deviceOffWrap;
    private readonly ushort* _deviceFlags;
    /// <summary>Ring descriptors each buffer ID's chain occupies while in flight; 0 when not in flight.</summary>
    private readonly ushort[] _chainSlots;
    /// <summary>Copies of the chain being taken.</summary>
    private readonly PackedDescriptor[] _chain;
    private ushort _availIdx;
    private bool _availWrap;
    private ushort _usedIdx;
    private bool _usedWrap;
    /// <summary>Ring descriptors taken and not yet returned.</summary>
    private uint _slotsInFlight;
    private uint _lastSignalPosition;
    private bool _signalledOnce;
    private PackedInflightQueue? _inflight;
    /// <summary>The dirty log the ring's own writes are marked in (VHOST_VRING_F_LOG), or null; with the guest-physical
    /// addresses of the descriptor ring and of the device event suppression structure.</summary>
    private DirtyLog? _ringLog;
    private ulong _ringGuestAddr;
    private ulong _deviceEventGuestAddr;

    /// <param name="ring">The descriptor ring, <paramref name="size"/> entries.</param>
    /// <param name="driverEvent">The driver event suppression structure (4 bytes; SET_VRING_ADDR's avail field).</param>
    /// <param name="deviceEvent">The device event suppression structure (4 bytes; SET_VRING_ADDR's used field).</param>
    /// <param name="vringBase">SET_VRING_BASE's value, see <see cref="PackedRingLayout.EncodeBase"/>.</param>
    /// <exception cref="ArgumentException">invalid size, or a base index not below it.</exception>
    public PackedRing(PackedDescriptor* ring, byte* driverEvent, byte* deviceEvent, uint size, uint vringBase, bool eventIdx)
    {
        if (!PackedRingLayout.IsValidSize(size)) throw new ArgumentException($"invalid queue size {size}");
        var (availIdx, availWrap, usedIdx, usedWrap) = PackedRingLayout.DecodeBase(vringBase);
        if (availIdx >= size || usedIdx >= size) throw new ArgumentException($"vring base 0x{vringBase:x8} outside a ring of {size}");
        _ring = ring;
        Size = size;
        EventIdx = eventIdx;
        _driverOffWrap = (ushort*)driverEvent;
        _driverFlags = (ushort*)(driverEvent + 2);
        _deviceOffWrap = (ushort*)deviceEvent;
        _deviceFlags = (ushort*)(deviceEvent + 2);
        _chainSlots = new ushort[size];
        _chain = new PackedDescriptor[size];
        _availIdx = availIdx;
        _availWrap = availWrap;
        _usedIdx = usedIdx;
        _usedWrap = usedWrap;
        _slotsInFlight = Distance(Position(usedIdx, usedWrap), Position(availIdx, availWrap));
        _lastSignalPosition = Position(usedIdx, usedWrap);
    }

    /// <summary>
    /// Locates the ring and both event suppression structures through the frontend-virtual addresses of
    /// SET_VRING_ADDR (desc = descriptor ring, avail = driver area, used = device area); null when a part lies outside
    /// guest memory or is misaligned (16 bytes for the ring, 4 for the areas), or the base does not fit the size.
    /// </summary>
    public static PackedRing? Create(GuestMemory memory, ulong descUser, ulong driverUser, ulong deviceUser, uint size, uint vringBase, bool eventIdx)
    {
        if (!PackedRingLayout.IsValidSize(size)) return null;
        if ((descUser & 15) != 0 || (driverUser & 3) != 0 || (deviceUser & 3) != 0) return null;
        var (availIdx, _, usedIdx, _) = PackedRingLayout.DecodeBase(vringBase);
        if (availIdx >= size || usedIdx >= size) return null;
        var ring = memory.TranslateUserRange(descUser, PackedRingLayout.DescriptorRingBytes(size));
        var driver = memory.TranslateUserRange(driverUser, PackedRingLayout.EventSuppressionBytes);
        var device = memory.TranslateUserRange(deviceUser, PackedRingLayout.EventSuppressionBytes);
        if (ring == null || driver == null || device == null) return null;
        return new PackedRing((PackedDescriptor*)ring, driver, device, size, vringBase, eventIdx);
    }

    public uint Size { get; }
    public bool EventIdx { get; }
    /// <summary>The avail position: bits 0-14 the next ring index to read, bit 15 the avail wrap counter.</summary>
    public ushort LastAvailIdx => PackedRingLayout.EncodePosition(_availIdx, _availWrap);
    /// <summary>The used position: bits 0-14 the next ring index to write, bit 15 the used wrap counter.</summary>
    public ushort UsedIdx => PackedRingLayout.EncodePosition(_usedIdx, _usedWrap);
    public uint VringBase => PackedRingLayout.EncodeBase(_availIdx, _availWrap, _usedIdx, _usedWrap);

    /// <summary>
    /// Tracks this ring's requests in <paramref name="inflight"/> from now on (packed layout of
    /// VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD). Call before the ring runs. When the region holds requests in flight, its
    /// last used update is committed or rolled back, those requests are taken again (in counter order) before any new
    /// descriptor, and both positions come from the region: used = the region's, avail = used plus the descriptors
    /// still in flight, whatever SET_VRING_BASE said.
    /// </summary>
    /// <returns>Null, or why the region cannot be used (<see cref="PackedInflightQueue.Recover"/>).</returns>
    public string? TrackInflight(PackedInflightQueue inflight)
    {
        var error = inflight.Recover(_ring, _usedIdx, _usedWrap, out var recovered);
        if (error is not null) return error;
        _inflight = inflight;
        if (recovered.Chains == 0) return null;
        _usedIdx = recovered.UsedIdx;
        _usedWrap = recovered.UsedWrap;
        uint avail = (Position(_usedIdx, _usedWrap) + recovered.Descriptors) % (2 * Size);
        _availIdx = (ushort)(avail % Size);
        _availWrap = avail < Size;
        // The resubmitted chains are counted in flight again when they are taken.
        _slotsInFlight = 0;
        _lastSignalPosition = Position(_usedIdx, _usedWrap);
        return null;
    }

    public PopStatus TryPopChain(GuestMemory memory, ref ChainBuffers chain, out ushort id, out string? error)
    {
        id = 0;
        error = null;
        if (_inflight is { PendingResubmits: > 0 } resubmit)
        {
            int n = resubmit.TakeResubmit(_chain);
            return Accept(memory, n, resubmitted: true, ref chain, out id, out error);
        }
        ushort idx = _availIdx;
        bool wrap = _availWrap;
        ushort headFlags = Volatile.Read(ref _ring[idx].Flags);
        if (!PackedRingLayout.IsAvailable(headFlags, wrap)) return PopStatus.Empty;
        int count = 0;
        ushort flags = headFlags;
        while (true)
        {
            if (count > 0)
            {
                flags = Volatile.Read(ref _ring[idx].Flags);
                if (!PackedRingLayout.IsAvailable(flags, wrap)) return Refuse(ChainError.NotAvailable, out error);
            }
            if (count == Size) return Refuse(ChainError.TooLong, out error);
            PackedDescriptor d = _ring[idx];
            d.Flags = flags;
            _chain[count++] = d;
            if (++idx == Size)
            {
                idx = 0;
                wrap = !wrap;
            }
            if ((flags & PackedRingLayout.FlagNext) == 0) break;
        }
        if (_slotsInFlight + (uint)count > Size) return Refuse(ChainError.NotAvailable, out error);
        _availIdx = idx;
        _availWrap = wrap;
        return Accept(memory, count, resubmitted: false, ref chain, out id, out error);
    }

    private PopStatus Accept(GuestMemory memory, int count, bool resubmitted, ref ChainBuffers chain, out ushort id, out string? error)
    {
        var descriptors = new ReadOnlySpan<PackedDescriptor>(_chain, 0, count);
        id = descriptors[count - 1].Id;
        if (id >= Size) return Refuse(ChainError.IdOutOfRange, out error);
        if (_chainSlots[id] != 0) return Refuse(ChainError.IdInFlight, out error);
        var walk = PackedChainWalker.Walk(memory, descriptors, ref chain);
        if (walk != ChainError.None) return Refuse(walk, out error, id);
        _chainSlots[id] = (ushort)count;
        _slotsInFlight += (uint)count;
        if (!resubmitted) _inflight?.MarkInflight(descriptors);
        error = null;
        return PopStatus.Popped;
    }

    private PopStatus Refuse(ChainError reason, out string? error, int id = -1)
    {
        error = id < 0
            ? $"packed chain at ring index {_availIdx} (wrap {(_availWrap ? 1 : 0)}) refused: {reason}"
            : $"packed chain with buffer ID {id} refused: {reason}";
        return PopStatus.Corrupt;
    }

    /// <summary>Nothing to do: a packed ring's next descriptor is the ring slot after the last one taken, which
    /// the check for pending requests has just read.</summary>
    public void PrefetchNext(ushort predictedId) { }

    public bool HasPending => _inflight is { PendingResubmits: > 0 }
        || PackedRingLayout.IsAvailable(Volatile.Read(ref _ring[_availIdx].Flags), _availWrap);

    /// <summary>
    /// Marks every later write of the ring itself in <paramref name="log"/>: used descriptors at
    /// <paramref name="ringGuestAddr"/> + 16 * slot, the device event suppression structure at
    /// <paramref name="deviceEventGuestAddr"/> (SET_VRING_ADDR's log_guest_addr for a packed ring); null stops it. Each
    /// write is marked after it is stored. Call on the thread that owns the ring.
    /// </summary>
    public void LogRingWrites(DirtyLog? log, ulong ringGuestAddr, ulong deviceEventGuestAddr)
    {
        _ringLog = log;
        _ringGuestAddr = ringGuestAddr;
        _deviceEventGuestAddr = deviceEventGuestAddr;
    }

    /// <summary>Returns buffer <paramref name="id"/>: id and len are written into the descriptor at the used position,
    /// then its flags (release), so the guest sees it at once; the used position moves past the chain's descriptors.
    /// An ID not in flight is ignored.</summary>
    public void PushUsed(ushort id, uint writtenLength)
    {
        if (id >= Size || _chainSlots[id] == 0) return;
        uint slots = _chainSlots[id];
        ushort slot = _usedIdx;
        bool wrap = _usedWrap;
        _usedIdx += (ushort)slots;
        if (_usedIdx >= Size)
        {
            _usedIdx -= (ushort)Size;
            _usedWrap = !_usedWrap;
        }
        _inflight?.BeginUsed(id, _usedIdx, _usedWrap);
        _ring[slot].Id = id;
        _ring[slot].Len = writtenLength;
        Volatile.Write(ref _ring[slot].Flags, PackedRingLayout.UsedFlags(wrap));
        // The driver reads this descriptor next and then writes the slot again: leave it in the shared cache.
        CacheLines.Demote(&_ring[slot]);
        _ringLog?.MarkGuest(_ringGuestAddr + 16UL * slot, 16);
        _inflight?.CommitUsed(id);
        _chainSlots[id] = 0;
        _slotsInFlight -= slots;
    }

    /// <summary>Nothing to do: <see cref="PushUsed"/> publishes each used descriptor by writing its flags.</summary>
    public void PublishUsed() { }

    /// <summary>
    /// Decides whether the guest wants an interrupt for what was used since the last check, from the driver event
    /// suppression structure (virtio 1.2, 2.8.10): DISABLE never, DESC (EVENT_IDX only) when the used position passed
    /// desc_event_off_wrap, otherwise (ENABLE) whenever anything was used. The first call after a (re)start always
    /// signals, as on split rings.
    /// </summary>
    public bool ShouldSignal()
    {
        Interlocked.MemoryBarrier();
        uint newPos = Position(_usedIdx, _usedWrap);
        uint oldPos = _lastSignalPosition;
        bool signal;
        if (!_signalledOnce) signal = true;
        else
        {
            ushort flags = (ushort)(Volatile.Read(ref *_driverFlags) & 3);
            if (flags == PackedRingLayout.EventFlagsDisable) signal = false;
            else if (flags == PackedRingLayout.EventFlagsDesc && EventIdx)
            {
                var (off, wrap) = PackedRingLayout.DecodePosition(Volatile.Read(ref *_driverOffWrap));
                uint eventPos = Position((ushort)(off % Size), wrap);
                signal = (Distance(eventPos, newPos) + 2 * Size - 1) % (2 * Size) < Distance(oldPos, newPos);
            }
            else signal = newPos != oldPos;
        }
        _lastSignalPosition = newPos;
        _signalledOnce |= signal;
        return signal;
    }

    /// <summary>Asks the guest to kick: with EVENT_IDX for the descriptor at the avail position (DESC), otherwise for
    /// every one (ENABLE). True when descriptors are already available (checked after a full fence).</summary>
    public bool EnableNotifications()
    {
        if (EventIdx)
        {
            Volatile.Write(ref *_deviceOffWrap, PackedRingLayout.EncodePosition(_availIdx, _availWrap));
            Volatile.Write(ref *_deviceFlags, PackedRingLayout.EventFlagsDesc);
        }
        else Volatile.Write(ref *_deviceFlags, PackedRingLayout.EventFlagsEnable);
        _ringLog?.MarkGuest(_deviceEventGuestAddr, 4);
        Interlocked.MemoryBarrier();
        return HasPending;
    }

    public void DisableNotifications()
    {
        Volatile.Write(ref *_deviceFlags, PackedRingLayout.EventFlagsDisable);
        _ringLog?.MarkGuest(_deviceEventGuestAddr, 4);
    }

    /// <summary>A position on the 2 * size cycle the (index, wrap) pairs run through: the first pass has wrap 1.</summary>
    private uint Position(ushort index, bool wrap) => index + (wrap ? 0u : Size);

    /// <summary>Steps from <paramref name="from"/> forward to <paramref name="to"/> on the 2 * size cycle.</summary>
    private uint Distance(uint from, uint to) => (to + 2 * Size - from) % (2 * Size);
}
