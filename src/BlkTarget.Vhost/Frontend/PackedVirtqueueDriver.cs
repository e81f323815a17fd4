using BlkTarget.Vhost.Protocol;
using BlkTarget.Vhost.Queues;

namespace BlkTarget.Vhost.Frontend;

/// <summary>
/// The driver (guest) side of one packed virtqueue (virtio 1.2, 2.8): a descriptor ring and the two event suppression
/// structures in the guest memory arena. Chains take consecutive ring slots from the avail position (the wrap counter
/// flips at the end of the ring) and a free buffer ID, written into every descriptor; the head's flags are written
/// last, with release semantics, when the chains are published, so the device sees a chain whole or not at all. Used
/// descriptors are reaped at the used position while their AVAIL and USED bits equal the used wrap counter (acquire);
/// the buffer ID they carry says which chain came back, in any order. Kicks follow the device event suppression
/// structure (ENABLE / DISABLE / DESC with EVENT_IDX); interrupts are asked for the same way in the driver area.
/// <para>One thread; no lock, no allocation after construction; the ID free list and chain lengths are private.</para>
/// </summary>
public sealed unsafe class PackedVirtqueueDriver : QueueDriver
{
    private readonly GuestBuffer _ringArea;
    private readonly GuestBuffer _driverArea;
    private readonly GuestBuffer _deviceArea;
    private readonly GuestBuffer _indirectArea;
    private readonly PackedDescriptor* _ring;
    private readonly ushort* _driverOffWrap;
    private readonly ushort* _driverFlags;
    private readonly ushort* _deviceOffWrap;
    private readonly ushort* _deviceFlags;
    private readonly ushort[] _freeIds;
    private readonly ushort[] _slots;
    private readonly ulong[] _tokens;
    private readonly bool[] _busy;
    /// <summary>Heads added but not yet published: ring slot and the flags to write there.</summary>
    private readonly ushort[] _pendingSlot;
    private readonly ushort[] _pendingFlags;
    private int _pendingCount;
    private int _freeIdCount;
    private int _numFree;
    private int _inFlight;
    private ushort _availIdx;
    private bool _availWrap;
    private ushort _usedIdx;
    private bool _usedWrap;
    /// <summary>Avail position (on the 2 * size cycle) at the last kick decision.</summary>
    private uint _lastKickPosition;
    private bool _interruptsEnabled = true;

    /// <param name="arena">Where the ring, event structures and indirect tables are allocated.</param>
    /// <param name="index">The queue's index on the device.</param>
    /// <param name="size">Queue size: a power of two up to 32768.</param>
    /// <param name="maxIndirectDescriptors">Entries of the indirect table preallocated per buffer ID; 0 disables them.</param>
    public PackedVirtqueueDriver(GuestMemoryArena arena, int index, int size, int maxIndirectDescriptors = 0)
        : base(index, size, maxIndirectDescriptors)
    {
        _ringArea = arena.Allocate((uint)PackedRingLayout.DescriptorRingBytes((uint)size), 4096);
        _driverArea = arena.Allocate(PackedRingLayout.EventSuppressionBytes, 64);
        _deviceArea = arena.Allocate(PackedRingLayout.EventSuppressionBytes, 64);
        if (maxIndirectDescriptors > 0)
            _indirectArea = arena.Allocate(checked((uint)(size * maxIndirectDescriptors * sizeof(PackedDescriptor))), 64);
        _ring = (PackedDescriptor*)_ringArea.Pointer;
        _driverOffWrap = (ushort*)_driverArea.Pointer;
        _driverFlags = (ushort*)(_driverArea.Pointer + 2);
        _deviceOffWrap = (ushort*)_deviceArea.Pointer;
        _deviceFlags = (ushort*)(_deviceArea.Pointer + 2);
        _freeIds = new ushort[size];
        _slots = new ushort[size];
        _tokens = new ulong[size];
        _busy = new bool[size];
        _pendingSlot = new ushort[size];
        _pendingFlags = new ushort[size];
        Reset();
    }

    public override bool Packed => true;

    /// <summary>desc = descriptor ring, avail = driver event suppression area, used = device event suppression area.</summary>
    public override VringAddress Address => new((uint)Index, 0, _ringArea.UserAddr, _deviceArea.UserAddr, _driverArea.UserAddr, 0);

    public GuestBuffer DescriptorRing => _ringArea;
    /// <summary>The device event suppression structure (SET_VRING_ADDR's used field; log_guest_addr when logging).</summary>
    public GuestBuffer DeviceEventArea => _deviceArea;
    public override int FreeDescriptors => _numFree;
    public override int InFlight => _inFlight;
    /// <summary>The avail position: ring index in bits 0-14, avail wrap counter in bit 15.</summary>
    public ushort AvailPosition => PackedRingLayout.EncodePosition(_availIdx, _availWrap);
    /// <summary>The used position the driver reads next, same encoding.</summary>
    public ushort UsedPosition => PackedRingLayout.EncodePosition(_usedIdx, _usedWrap);

    public override void Reset()
    {
        _ringArea.Span.Clear();
        _driverArea.Span.Clear();
        _deviceArea.Span.Clear();
        for (int i = 0; i < Size; i++)
        {
            _freeIds[i] = (ushort)(Size - 1 - i);
            _busy[i] = false;
            _tokens[i] = 0;
            _slots[i] = 0;
        }
        _freeIdCount = Size;
        _numFree = Size;
        _inFlight = 0;
        _pendingCount = 0;
        _availIdx = 0;
        _availWrap = true;
        _usedIdx = 0;
        _usedWrap = true;
        _lastKickPosition = 0;
        _interruptsEnabled = true;
        NextBase = PackedRingLayout.EncodeBase(0, true, 0, true);
        DrainCalls();
    }

    /// <summary>QEMU 7.2 has no used index in shared memory to fall back on for packed rings: it keeps the base it sent
    /// at the last start.</summary>
    public override void RestoreBaseAfterBackendLoss() { }

    public override bool TryAdd(ReadOnlySpan<VirtqBuffer> buffers, ulong token, bool indirect, out ushort head)
    {
        if (buffers.IsEmpty) throw new ArgumentException("a chain needs at least one buffer", nameof(buffers));
        head = 0;
        if (indirect && buffers.Length > MaxIndirectDescriptors)
            throw new ArgumentException($"{buffers.Length} buffers exceed the indirect table of {MaxIndirectDescriptors} entries", nameof(buffers));
        if (!indirect && buffers.Length > Size) throw new ArgumentException($"{buffers.Length} buffers exceed the queue size {Size}", nameof(buffers));
        int slots = indirect ? 1 : buffers.Length;
        if (_numFree < slots || _freeIdCount == 0) return false;
        ushort id = _freeIds[--_freeIdCount];
        head = id;
        if (indirect)
        {
            var table = IndirectTable(id);
            for (int i = 0; i < buffers.Length; i++)
                table[i] = new PackedDescriptor { Addr = buffers[i].Gpa, Len = buffers[i].Length, Flags = buffers[i].Writable ? PackedRingLayout.FlagWrite : (ushort)0 };
            Place(new PackedDescriptor { Addr = IndirectTableGpa(id), Len = (uint)(buffers.Length * sizeof(PackedDescriptor)), Id = id, Flags = PackedRingLayout.FlagIndirect }, first: true);
        }
        else
        {
            for (int i = 0; i < buffers.Length; i++)
            {
                var b = buffers[i];
                ushort flags = (ushort)((b.Writable ? PackedRingLayout.FlagWrite : 0) | (i < buffers.Length - 1 ? PackedRingLayout.FlagNext : 0));
                Place(new PackedDescriptor { Addr = b.Gpa, Len = b.Length, Id = id, Flags = flags }, first: i == 0);
            }
        }
        _slots[id] = (ushort)slots;
        _tokens[id] = token;
        _busy[id] = true;
        _numFree -= slots;
        _inFlight++;
        return true;
    }

    /// <summary>For hostile tests: writes <paramref name="descriptors"/> into consecutive slots exactly as given (IDs,
    /// NEXT and INDIRECT flags included; the AVAIL/USED bits are set for the current wrap), published with the next
    /// kick. The slots are spent for good unless the device returns a used descriptor for them.</summary>
    public void AddRaw(ReadOnlySpan<PackedDescriptor> descriptors)
    {
        if (descriptors.Length > _numFree) throw new InvalidOperationException("not enough free descriptors");
        for (int i = 0; i < descriptors.Length; i++) Place(descriptors[i], first: i == 0);
        _numFree -= descriptors.Length;
    }

    /// <summary>Writes one descriptor at the avail position with the AVAIL/USED bits of the current wrap; a chain's
    /// first descriptor gets its flags only at publish time.</summary>
    private void Place(PackedDescriptor d, bool first)
    {
        ushort flags = (ushort)(d.Flags & ~(PackedRingLayout.FlagAvail | PackedRingLayout.FlagUsed));
        flags |= _availWrap ? PackedRingLayout.FlagAvail : PackedRingLayout.FlagUsed;
        ushort slot = _availIdx;
        _ring[slot].Addr = d.Addr;
        _ring[slot].Len = d.Len;
        _ring[slot].Id = d.Id;
        if (first)
        {
            _pendingSlot[_pendingCount] = slot;
            _pendingFlags[_pendingCount++] = flags;
        }
        else _ring[slot].Flags = flags;
        if (++_availIdx == Size)
        {
            _availIdx = 0;
            _availWrap = !_availWrap;
        }
    }

    private PackedDescriptor* IndirectTable(ushort id) => (PackedDescriptor*)_indirectArea.Pointer + id * MaxIndirectDescriptors;

    private ulong IndirectTableGpa(ushort id) => _indirectArea.Gpa + (ulong)(id * MaxIndirectDescriptors * sizeof(PackedDescriptor));

    /// <summary>Makes the added chains available: each head's flags, in order, with release stores.</summary>
    public override void PublishAvail()
    {
        for (int i = 0; i < _pendingCount; i++) Volatile.Write(ref _ring[_pendingSlot[i]].Flags, _pendingFlags[i]);
        _pendingCount = 0;
    }

    /// <summary>Publishes and kicks if the device event suppression structure asks for it (virtio 1.2, 2.8.10): not
    /// with DISABLE, with DESC when its off_wrap lies in the newly published range, otherwise whenever something new
    /// was published.</summary>
    public override bool KickIfNeeded()
    {
        PublishAvail();
        Interlocked.MemoryBarrier();
        uint newPos = Position(_availIdx, _availWrap);
        uint oldPos = _lastKickPosition;
        _lastKickPosition = newPos;
        if (newPos == oldPos) return false;
        ushort flags = (ushort)(Volatile.Read(ref *_deviceFlags) & 3);
        bool kick = flags switch
        {
            PackedRingLayout.EventFlagsDisable => false,
            PackedRingLayout.EventFlagsDesc when EventIdx => InRange(Volatile.Read(ref *_deviceOffWrap), oldPos, newPos),
            _ => true,
        };
        if (kick) SignalKick();
        return kick;
    }

    protected override void OnKicked() => _lastKickPosition = Position(_availIdx, _availWrap);

    public override bool HasUsed => IsUsed(Volatile.Read(ref _ring[_usedIdx].Flags));

    private bool IsUsed(ushort flags) =>
        ((flags & PackedRingLayout.FlagAvail) != 0) == _usedWrap && ((flags & PackedRingLayout.FlagUsed) != 0) == _usedWrap;

    public override bool TryGetUsed(out ulong token, out uint length, out ushort head)
    {
        token = 0;
        length = 0;
        head = 0;
        if (!IsUsed(Volatile.Read(ref _ring[_usedIdx].Flags))) return false;
        ushort id = _ring[_usedIdx].Id;
        if (id >= Size || !_busy[id])
            throw new VirtqueueDeviceException($"queue {Index}: device returned buffer ID {id} at ring index {_usedIdx}, which is not in flight");
        head = id;
        token = _tokens[id];
        length = _ring[_usedIdx].Len;
        int slots = _slots[id];
        _usedIdx += (ushort)slots;
        if (_usedIdx >= Size)
        {
            _usedIdx -= (ushort)Size;
            _usedWrap = !_usedWrap;
        }
        _busy[id] = false;
        _freeIds[_freeIdCount++] = id;
        _numFree += slots;
        _inFlight--;
        if (EventIdx && _interruptsEnabled) Volatile.Write(ref *_driverOffWrap, UsedPosition);
        return true;
    }

    public override void DisableInterrupts()
    {
        _interruptsEnabled = false;
        Volatile.Write(ref *_driverFlags, PackedRingLayout.EventFlagsDisable);
    }

    public override bool EnableInterrupts()
    {
        _interruptsEnabled = true;
        if (EventIdx)
        {
            Volatile.Write(ref *_driverOffWrap, UsedPosition);
            Volatile.Write(ref *_driverFlags, PackedRingLayout.EventFlagsDesc);
        }
        else Volatile.Write(ref *_driverFlags, PackedRingLayout.EventFlagsEnable);
        Interlocked.MemoryBarrier();
        return HasUsed;
    }

    private uint Position(ushort index, bool wrap) => index + (wrap ? 0u : (uint)Size);

    /// <summary>Whether the position <paramref name="offWrap"/> names lies in [old, new) on the 2 * size cycle.</summary>
    private bool InRange(ushort offWrap, uint oldPos, uint newPos)
    {
        uint cycle = 2u * (uint)Size;
        var (off, wrap) = PackedRingLayout.DecodePosition(offWrap);
        uint eventPos = Position((ushort)(off % Size), wrap);
        return (newPos + cycle - eventPos - 1) % cycle < (newPos + cycle - oldPos) % cycle;
    }
}
