using BlkTarget.Storage.Interop;
using BlkTarget.Vhost.Protocol;
using BlkTarget.Vhost.Queues;

namespace BlkTarget.Vhost.Frontend;

/// <summary>Thrown when the device writes something into the used ring no correct device writes.</summary>
public sealed class VirtqueueDeviceException(string message) : Exception(message);

/// <summary>
/// The driver (guest) side of one split virtqueue: descriptor table, avail and used rings in the guest memory
/// arena, the kick and call eventfds, a free-descriptor list and per-chain bookkeeping. It adds descriptor
/// chains (direct or through a preallocated per-head indirect table), publishes avail->idx with release
/// semantics, kicks only when the device asked for it (VRING_USED_F_NO_NOTIFY or avail_event with EVENT_IDX),
/// and reaps used elements with acquire semantics.
/// <para>
/// One thread drives one queue; nothing here locks or allocates after construction. The driver never trusts
/// what lies in shared memory for its own bookkeeping: the free list and chain lengths live in private arrays.
/// </para>
/// </summary>
public sealed unsafe class VirtqueueDriver : QueueDriver
{
    private readonly GuestBuffer _descArea;
    private readonly GuestBuffer _availArea;
    private readonly GuestBuffer _usedArea;
    private readonly GuestBuffer _indirectArea;
    private readonly VirtqDescriptor* _desc;
    private readonly ushort* _availFlags;
    private readonly ushort* _availIdx;
    private readonly ushort* _availRing;
    private readonly ushort* _usedEvent;
    private readonly ushort* _usedFlags;
    private readonly ushort* _usedIdx;
    private readonly VirtqUsedElement* _usedRing;
    private readonly ushort* _availEvent;
    private readonly ushort _mask;
    // Private bookkeeping, indexed by descriptor / head.
    private readonly ushort[] _next;
    private readonly ushort[] _chainLength;
    private readonly ushort[] _chainTail;
    private readonly ulong[] _tokens;
    private readonly bool[] _busy;
    private ushort _freeHead;
    private int _numFree;
    private int _inFlight;
    private ushort _availShadow;
    private ushort _lastKickAvail;
    private ushort _lastUsed;
    private bool _interruptsEnabled = true;

    /// <param name="arena">Where the rings (and indirect tables) are allocated.</param>
    /// <param name="index">The queue's index on the device.</param>
    /// <param name="size">Queue size: a power of two up to 32768.</param>
    /// <param name="maxIndirectDescriptors">Entries of the indirect table preallocated per head; 0 disables
    /// indirect chains.</param>
    public VirtqueueDriver(GuestMemoryArena arena, int index, int size, int maxIndirectDescriptors = 0)
        : base(index, size, maxIndirectDescriptors)
    {
        _mask = (ushort)(size - 1);

        _descArea = arena.Allocate((uint)SplitRingLayout.DescriptorTableBytes((uint)size), 4096);
        _availArea = arena.Allocate((uint)SplitRingLayout.AvailRingBytes((uint)size), 64);
        _usedArea = arena.Allocate((uint)SplitRingLayout.UsedRingBytes((uint)size), 4096);
        if (maxIndirectDescriptors > 0)
            _indirectArea = arena.Allocate(checked((uint)(size * maxIndirectDescriptors * sizeof(VirtqDescriptor))), 64);

        _desc = (VirtqDescriptor*)_descArea.Pointer;
        byte* avail = _availArea.Pointer;
        _availFlags = (ushort*)avail;
        _availIdx = (ushort*)(avail + 2);
        _availRing = (ushort*)(avail + 4);
        _usedEvent = (ushort*)(avail + 4 + 2 * size);
        byte* used = _usedArea.Pointer;
        _usedFlags = (ushort*)used;
        _usedIdx = (ushort*)(used + 2);
        _usedRing = (VirtqUsedElement*)(used + 4);
        _availEvent = (ushort*)(used + 4 + 8 * size);

        _next = new ushort[size];
        _chainLength = new ushort[size];
        _chainTail = new ushort[size];
        _tokens = new ulong[size];
        _busy = new bool[size];
        Reset();
    }

    public override bool Packed => false;

    public GuestBuffer DescriptorTable => _descArea;
    public GuestBuffer AvailRing => _availArea;
    public GuestBuffer UsedRing => _usedArea;
    public override int FreeDescriptors => _numFree;
    public override int InFlight => _inFlight;
    /// <summary>The driver's avail index (including entries not yet published).</summary>
    public ushort AvailIdx => _availShadow;
    /// <summary>The next used index the driver will read.</summary>
    public ushort LastUsedIdx => _lastUsed;
    /// <summary>used->idx as the device last published it.</summary>
    public ushort DeviceUsedIdx => Volatile.Read(ref *_usedIdx);

    /// <summary>SET_VRING_ADDR payload: the three rings' frontend-virtual addresses.</summary>
    public override VringAddress Address => new((uint)Index, 0, _descArea.UserAddr, _usedArea.UserAddr, _availArea.UserAddr, 0);

    /// <summary>Zeroes the rings and forgets every chain: the state of a freshly initialised queue (guest driver
    /// probe after a reset). Only while the device is not running the queue.</summary>
    public override void Reset()
    {
        _descArea.Span.Clear();
        _availArea.Span.Clear();
        _usedArea.Span.Clear();
        for (int i = 0; i < Size; i++)
        {
            _next[i] = (ushort)(i + 1);
            _busy[i] = false;
            _tokens[i] = 0;
            _chainLength[i] = 0;
        }
        _freeHead = 0;
        _numFree = Size;
        _inFlight = 0;
        _availShadow = 0;
        _lastKickAvail = 0;
        _lastUsed = 0;
        _interruptsEnabled = true;
        NextBase = 0;
        DrainCalls();
    }

    public override void RestoreBaseAfterBackendLoss() => NextBase = DeviceUsedIdx;

    /// <summary>
    /// Adds a chain of <paramref name="buffers"/> (device-readable ones must come first) and puts its head in the
    /// avail ring, unpublished until <see cref="PublishAvail"/> or <see cref="KickIfNeeded"/>. With
    /// <paramref name="indirect"/> the buffers go into the head's indirect table and the chain costs one
    /// descriptor. False when not enough descriptors are free.
    /// </summary>
    public override bool TryAdd(ReadOnlySpan<VirtqBuffer> buffers, ulong token, bool indirect, out ushort head)
    {
        if (buffers.IsEmpty) throw new ArgumentException("a chain needs at least one buffer", nameof(buffers));
        head = 0;
        if (indirect)
        {
            if (buffers.Length > MaxIndirectDescriptors)
                throw new ArgumentException($"{buffers.Length} buffers exceed the indirect table of {MaxIndirectDescriptors} entries", nameof(buffers));
            if (_numFree < 1) return false;
            head = TakeFree(1, out ushort tail);
            VirtqDescriptor* table = IndirectTable(head);
            for (int i = 0; i < buffers.Length; i++)
            {
                var b = buffers[i];
                bool last = i == buffers.Length - 1;
                table[i] = new VirtqDescriptor
                {
                    Addr = b.Gpa,
                    Len = b.Length,
                    Flags = (ushort)((b.Writable ? VirtqDescriptor.FlagWrite : 0) | (last ? 0 : VirtqDescriptor.FlagNext)),
                    Next = last ? (ushort)0 : (ushort)(i + 1),
                };
            }
            _desc[head] = new VirtqDescriptor
            {
                Addr = IndirectTableGpa(head),
                Len = (uint)(buffers.Length * sizeof(VirtqDescriptor)),
                Flags = VirtqDescriptor.FlagIndirect,
            };
            Track(head, tail, 1, token);
        }
        else
        {
            if (buffers.Length > Size) throw new ArgumentException($"{buffers.Length} buffers exceed the queue size {Size}", nameof(buffers));
            if (_numFree < buffers.Length) return false;
            head = TakeFree(buffers.Length, out ushort tail);
            ushort d = head;
            for (int i = 0; i < buffers.Length; i++)
            {
                var b = buffers[i];
                bool last = i == buffers.Length - 1;
                _desc[d] = new VirtqDescriptor
                {
                    Addr = b.Gpa,
                    Len = b.Length,
                    Flags = (ushort)((b.Writable ? VirtqDescriptor.FlagWrite : 0) | (last ? 0 : VirtqDescriptor.FlagNext)),
                    Next = last ? (ushort)0 : _next[d],
                };
                d = _next[d];
            }
            Track(head, tail, (ushort)buffers.Length, token);
        }
        PushAvail(head);
        return true;
    }

    /// <summary>
    /// For hostile tests: adds a chain whose descriptors are written exactly as given (addresses, lengths, flags,
    /// and the last descriptor's <c>next</c>), except that every descriptor but the last is linked to the next
    /// one taken from the free list (NEXT flag and index). So the last descriptor can point anywhere: a loop back
    /// to the head, an index out of range, an indirect table of the caller's making. The chain's descriptors are
    /// returned to the free list only if the device ever completes it.
    /// </summary>
    public bool TryAddRaw(ReadOnlySpan<VirtqDescriptor> descriptors, ulong token, out ushort head)
    {
        if (descriptors.IsEmpty || descriptors.Length > Size) throw new ArgumentException("bad descriptor count", nameof(descriptors));
        head = 0;
        if (_numFree < descriptors.Length) return false;
        head = TakeFree(descriptors.Length, out ushort tail);
        ushort d = head;
        for (int i = 0; i < descriptors.Length; i++)
        {
            var raw = descriptors[i];
            if (i < descriptors.Length - 1)
            {
                raw.Flags |= VirtqDescriptor.FlagNext;
                raw.Next = _next[d];
            }
            _desc[d] = raw;
            d = _next[d];
        }
        Track(head, tail, (ushort)descriptors.Length, token);
        PushAvail(head);
        return true;
    }

    /// <summary>The head's preallocated indirect table (for hostile tests that want to write one by hand).</summary>
    public GuestBuffer IndirectTableOf(ushort head)
    {
        if (MaxIndirectDescriptors == 0) throw new InvalidOperationException("this queue has no indirect tables");
        return _indirectArea.Slice((uint)(head * MaxIndirectDescriptors * sizeof(VirtqDescriptor)), (uint)(MaxIndirectDescriptors * sizeof(VirtqDescriptor)));
    }

    private VirtqDescriptor* IndirectTable(ushort head) => (VirtqDescriptor*)_indirectArea.Pointer + head * MaxIndirectDescriptors;

    private ulong IndirectTableGpa(ushort head) => _indirectArea.Gpa + (ulong)(head * MaxIndirectDescriptors * sizeof(VirtqDescriptor));

    private ushort TakeFree(int count, out ushort tail)
    {
        ushort head = _freeHead;
        tail = head;
        for (int i = 1; i < count; i++) tail = _next[tail];
        _freeHead = _next[tail];
        _numFree -= count;
        return head;
    }

    private void Track(ushort head, ushort tail, ushort length, ulong token)
    {
        _chainLength[head] = length;
        _chainTail[head] = tail;
        _tokens[head] = token;
        _busy[head] = true;
        _inFlight++;
    }

    private void PushAvail(ushort head)
    {
        _availRing[_availShadow & _mask] = head;
        _availShadow++;
    }

    /// <summary>Makes every added chain visible to the device: release store of avail->idx after the ring
    /// entries and descriptors.</summary>
    public override void PublishAvail() => Volatile.Write(ref *_availIdx, _availShadow);

    /// <summary>
    /// Publishes the added chains and kicks the device if it wants to be told (virtio 1.2 2.7.10: without
    /// EVENT_IDX unless used->flags has NO_NOTIFY; with it when avail_event lies in the newly published range).
    /// Returns whether it kicked.
    /// </summary>
    public override bool KickIfNeeded()
    {
        PublishAvail();
        // The device's flag / avail_event must be read after avail->idx is visible (pairs with its fence).
        Interlocked.MemoryBarrier();
        ushort newIdx = _availShadow;
        ushort oldIdx = _lastKickAvail;
        _lastKickAvail = newIdx;
        if (newIdx == oldIdx) return false;
        bool kick = EventIdx
            ? (ushort)(newIdx - Volatile.Read(ref *_availEvent) - 1) < (ushort)(newIdx - oldIdx)
            : (Volatile.Read(ref *_usedFlags) & SplitRingLayout.UsedFlagNoNotify) == 0;
        if (kick) SignalKick();
        return kick;
    }

    protected override void OnKicked() => _lastKickAvail = _availShadow;

    /// <summary>Whether the device published used elements the driver has not reaped (acquire read).</summary>
    public override bool HasUsed => Volatile.Read(ref *_usedIdx) != _lastUsed;

    /// <summary>Reaps one used element: the token given when the chain was added and the length the device
    /// reports writing. The chain's descriptors return to the free list.</summary>
    public override bool TryGetUsed(out ulong token, out uint length, out ushort head)
    {
        ushort usedIdx = Volatile.Read(ref *_usedIdx);
        if (usedIdx == _lastUsed)
        {
            token = 0;
            length = 0;
            head = 0;
            return false;
        }
        if ((ushort)(usedIdx - _lastUsed) > _inFlight)
            throw new VirtqueueDeviceException($"queue {Index}: used->idx {usedIdx} is {(ushort)(usedIdx - _lastUsed)} ahead of {_lastUsed} with {_inFlight} chains in flight");
        VirtqUsedElement element = _usedRing[_lastUsed & _mask];
        if (element.Id >= (uint)Size || !_busy[element.Id])
            throw new VirtqueueDeviceException($"queue {Index}: device returned descriptor {element.Id}, which is not the head of a chain in flight");
        head = (ushort)element.Id;
        token = _tokens[head];
        length = element.Len;
        _busy[head] = false;
        _next[_chainTail[head]] = _freeHead;
        _freeHead = head;
        _numFree += _chainLength[head];
        _inFlight--;
        _lastUsed++;
        // Ask for an interrupt at the next used entry (EVENT_IDX); the fence before sleeping orders it.
        if (EventIdx && _interruptsEnabled) Volatile.Write(ref *_usedEvent, _lastUsed);
        return true;
    }

    /// <summary>Asks the device not to signal the call eventfd (for polling drivers).</summary>
    public override void DisableInterrupts()
    {
        _interruptsEnabled = false;
        if (!EventIdx) Volatile.Write(ref *_availFlags, SplitRingLayout.AvailFlagNoInterrupt);
        // With EVENT_IDX, leaving used_event behind suppresses interrupts.
    }

    /// <summary>Asks the device to signal again. Returns true when used elements are already waiting (checked
    /// after a full fence), so the caller must not sleep.</summary>
    public override bool EnableInterrupts()
    {
        _interruptsEnabled = true;
        if (EventIdx) Volatile.Write(ref *_usedEvent, _lastUsed);
        else Volatile.Write(ref *_availFlags, (ushort)0);
        Interlocked.MemoryBarrier();
        return HasUsed;
    }
}
