using System.Buffers.Binary;
using BlkTarget.Vhost.Blk;

namespace BlkTarget.Vhost.Frontend;

/// <summary>virtio-blk request types (virtio 1.2 5.2.6). Any other value can be sent too, for tests.</summary>
public enum BlkRequestType : uint
{
    In = VirtioBlk.TypeIn,
    Out = VirtioBlk.TypeOut,
    Flush = VirtioBlk.TypeFlush,
    GetId = VirtioBlk.TypeGetId,
    Discard = VirtioBlk.TypeDiscard,
    WriteZeroes = VirtioBlk.TypeWriteZeroes,
}

/// <summary>One finished virtio-blk request: the caller's token, the status byte the device wrote, and the
/// used length it reported (data written plus the status byte).</summary>
public readonly record struct BlkCompletion(ulong Token, byte Status, uint UsedLength)
{
    public bool IsOk => Status == VirtioBlk.StatusOk;
}

/// <summary>One DISCARD / WRITE_ZEROES segment: {u64 sector, u32 num_sectors, u32 flags}.</summary>
public readonly record struct BlkRange(ulong Sector, uint Sectors, uint Flags = 0)
{
    public const uint FlagUnmap = VirtioBlk.RangeFlagUnmap;
}

/// <summary>
/// virtio-blk requests over one <see cref="QueueDriver"/>: each request is a 16-byte header, the caller's
/// data buffers and a 1-byte status. Headers and status bytes live in per-request slots preallocated in the
/// arena (one per ring entry), so submitting and completing allocate nothing. The data buffers belong to the
/// caller and must stay untouched until the request completes.
/// </summary>
public sealed unsafe class BlkRequestQueue
{
    /// <summary>Bytes per slot: header (16) then status (1), padded.</summary>
    private const int SlotBytes = 32;
    private const int StatusOffset = VirtioBlk.HeaderLength;
    /// <summary>The status byte before the device writes it: no valid status has this value.</summary>
    public const byte StatusPending = 0xff;
    /// <summary>Most data buffers per request (the chain is built on the stack).</summary>
    public const int MaxDataBuffers = 1022;

    private readonly GuestBuffer _slots;
    private readonly int[] _freeSlots;
    private readonly ulong[] _userTokens;
    private int _freeCount;

    public BlkRequestQueue(QueueDriver queue, GuestMemoryArena arena)
    {
        Queue = queue;
        _slots = arena.Allocate((uint)(queue.Size * SlotBytes), 64);
        _freeSlots = new int[queue.Size];
        _userTokens = new ulong[queue.Size];
        ResetSlots();
    }

    public QueueDriver Queue { get; }

    /// <summary>Where the request headers and status bytes live: slot n holds its header at n * 32 and its status byte
    /// at n * 32 + 16 (the device writes only those).</summary>
    public GuestBuffer HeaderStatusArea => _slots;

    /// <summary>Requests submitted and not yet completed.</summary>
    public int InFlight => Queue.Size - _freeCount;

    /// <summary>Forgets all requests; pair with <see cref="QueueDriver.Reset"/>.</summary>
    public void ResetSlots()
    {
        for (int i = 0; i < _freeSlots.Length; i++) _freeSlots[i] = _freeSlots.Length - 1 - i;
        _freeCount = _freeSlots.Length;
    }

    /// <summary>Whether the device writes the data buffers of this request type (IN, GET_ID) or reads them.</summary>
    public static bool DeviceWritesData(BlkRequestType type) => type is BlkRequestType.In or BlkRequestType.GetId;

    /// <summary>
    /// Adds one request to the avail ring (not yet published: call <see cref="Kick"/>). Data buffers are
    /// device-writable for IN and GET_ID, device-readable otherwise. False when the ring is full.
    /// </summary>
    public bool TrySubmit(BlkRequestType type, ulong sector, ReadOnlySpan<GuestBuffer> data, ulong token, bool indirect = false, uint ioprio = 0) =>
        TrySubmit(type, sector, data, token, DeviceWritesData(type), indirect, ioprio);

    /// <summary>As above with the data direction given explicitly (for request types this helper does not know).</summary>
    public bool TrySubmit(BlkRequestType type, ulong sector, ReadOnlySpan<GuestBuffer> data, ulong token, bool dataWritable, bool indirect, uint ioprio = 0)
    {
        if (data.Length > MaxDataBuffers) throw new ArgumentException($"at most {MaxDataBuffers} data buffers", nameof(data));
        if (_freeCount == 0) return false;
        int slot = _freeSlots[_freeCount - 1];
        byte* slotPointer = _slots.Pointer + slot * SlotBytes;
        var header = new Span<byte>(slotPointer, VirtioBlk.HeaderLength);
        BinaryPrimitives.WriteUInt32LittleEndian(header, (uint)type);
        BinaryPrimitives.WriteUInt32LittleEndian(header[4..], ioprio);
        BinaryPrimitives.WriteUInt64LittleEndian(header[8..], sector);
        slotPointer[StatusOffset] = StatusPending;

        Span<VirtqBuffer> chain = stackalloc VirtqBuffer[data.Length + 2];
        ulong slotGpa = _slots.Gpa + (ulong)(slot * SlotBytes);
        chain[0] = new VirtqBuffer(slotGpa, VirtioBlk.HeaderLength, Writable: false);
        for (int i = 0; i < data.Length; i++) chain[i + 1] = new VirtqBuffer(data[i].Gpa, data[i].Length, dataWritable);
        chain[^1] = new VirtqBuffer(slotGpa + StatusOffset, 1, Writable: true);
        if (!Queue.TryAdd(chain, (ulong)slot, indirect)) return false;
        _freeCount--;
        _userTokens[slot] = token;
        return true;
    }

    /// <summary>Publishes submitted requests and kicks the device if it wants a kick.</summary>
    public bool Kick() => Queue.KickIfNeeded();

    /// <summary>Reaps one completed request, if any.</summary>
    public bool TryComplete(out BlkCompletion completion)
    {
        if (!Queue.TryGetUsed(out ulong slotToken, out uint length))
        {
            completion = default;
            return false;
        }
        int slot = (int)slotToken;
        byte status = Volatile.Read(ref _slots.Pointer[slot * SlotBytes + StatusOffset]);
        completion = new BlkCompletion(_userTokens[slot], status, length);
        _freeSlots[_freeCount++] = slot;
        return true;
    }

    /// <summary>Reaps up to <paramref name="completions"/>.Length completed requests; returns how many.</summary>
    public int Poll(Span<BlkCompletion> completions)
    {
        int n = 0;
        while (n < completions.Length && TryComplete(out completions[n])) n++;
        return n;
    }

    /// <summary>
    /// Submits one request, kicks, and waits (on the call eventfd) for its completion: the synchronous path for
    /// tests and tools. Only while nothing else is in flight on this queue. Throws <see cref="TimeoutException"/>
    /// when the device does not answer in time.
    /// </summary>
    public BlkCompletion Execute(BlkRequestType type, ulong sector, ReadOnlySpan<GuestBuffer> data, bool indirect = false, TimeSpan? timeout = null) =>
        Execute(type, sector, data, DeviceWritesData(type), indirect, timeout);

    public BlkCompletion Execute(BlkRequestType type, ulong sector, ReadOnlySpan<GuestBuffer> data, bool dataWritable, bool indirect, TimeSpan? timeout = null)
    {
        if (InFlight != 0) throw new InvalidOperationException("Execute needs an idle queue");
        if (!TrySubmit(type, sector, data, token: 0, dataWritable, indirect)) throw new InvalidOperationException("the queue has no room for the request");
        Kick();
        return WaitForCompletion(timeout ?? TimeSpan.FromSeconds(10));
    }

    /// <summary>Waits for the next completion on this queue.</summary>
    public BlkCompletion WaitForCompletion(TimeSpan timeout)
    {
        long deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        while (true)
        {
            if (TryComplete(out var completion)) return completion;
            long left = deadline - Environment.TickCount64;
            if (left <= 0 || !Queue.WaitForUsed((int)left))
                throw new TimeoutException($"queue {Queue.Index}: no completion within {timeout.TotalMilliseconds} ms ({InFlight} in flight)");
        }
    }

    /// <summary>Encodes DISCARD / WRITE_ZEROES segments into <paramref name="destination"/>; returns the bytes
    /// written (16 per range).</summary>
    public static uint WriteRanges(Span<byte> destination, ReadOnlySpan<BlkRange> ranges)
    {
        if (destination.Length < ranges.Length * VirtioBlk.RangeSegmentLength) throw new ArgumentException("buffer too small for the ranges", nameof(destination));
        for (int i = 0; i < ranges.Length; i++)
        {
            var d = destination[(i * VirtioBlk.RangeSegmentLength)..];
            BinaryPrimitives.WriteUInt64LittleEndian(d, ranges[i].Sector);
            BinaryPrimitives.WriteUInt32LittleEndian(d[8..], ranges[i].Sectors);
            BinaryPrimitives.WriteUInt32LittleEndian(d[12..], ranges[i].Flags);
        }
        return (uint)(ranges.Length * VirtioBlk.RangeSegmentLength);
    }
}
