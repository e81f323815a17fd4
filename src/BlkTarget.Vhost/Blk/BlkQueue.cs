using System.Buffers.Binary;
using BlkTarget.Storage;
using BlkTarget.Vhost.Device;
using BlkTarget.Vhost.Interop;
using BlkTarget.Vhost.Memory;
using BlkTarget.Vhost.Queues;
using Microsoft.Extensions.Logging;

namespace BlkTarget.Vhost.Blk;

/// <summary>
/// One running virtio-blk queue: turns descriptor chains into storage requests whose iovecs point into guest
/// memory, and completes them through the used ring. Request state lives in slots indexed by the chain's head
/// descriptor (unique while in flight), allocated once at queue start: nothing is allocated per request.
/// </summary>
public sealed unsafe class BlkQueue : IRunningQueue, IBlockCompletionSink
{
    /// <summary>Buffers per request we track: seg_max data segments, header, status, and room for splits.</summary>
    public const int SegmentsPerSlot = 256;
    /// <summary>Requests taken per poll before completions get a turn, to keep latency fair.</summary>
    private const int PopBudget = 64;

    private struct Slot
    {
        public bool Busy;
        public byte* Status;
        public uint UsedLength;
        public int Pending;
        public byte Result;
    }

    private readonly IVirtqueue _ring;
    private readonly GuestMemory _memory;
    private readonly BlkDeviceContext _device;
    private readonly IBlockChannel _channel;
    private readonly Slot[] _slots;
    private readonly NativeBuffer _segmentBuffer;
    private readonly IoVec* _segments;
    private readonly IoVec* _scratch;
    private readonly int _kickFd;
    private readonly ILogger _log;
    private int _callFd;
    private int _inFlight;
    private bool _usedPending;
    private Action? _onDrained;
    private bool _stopping;

    public BlkQueue(QueueStartInfo start, BlkDeviceContext device, ILogger log)
    {
        Index = start.Index;
        _ring = start.Ring;
        _memory = start.Memory;
        _device = device;
        _kickFd = start.KickFd;
        _callFd = start.CallFd;
        _log = log;
        _slots = new Slot[_ring.Size];
        // One extra slot's worth at the end is the scratch space chains are walked into.
        _segmentBuffer = new NativeBuffer((nuint)((_ring.Size + 1) * SegmentsPerSlot * sizeof(IoVec)));
        _segments = (IoVec*)_segmentBuffer.Pointer;
        _scratch = _segments + _ring.Size * SegmentsPerSlot;
        _channel = device.Backend.OpenChannel(start.Io, this, (int)_ring.Size * (int)Math.Max(1, device.Options.MaxRangeSegments));
    }

    public int Index { get; }
    public int KickFd => _kickFd;
    public ushort LastAvailIdx => _ring.LastAvailIdx;
    public string? BrokenReason { get; private set; }
    public int InFlight => _inFlight;

    public void SetCallFd(int fd) => _callFd = fd;

    public void BeginStop(Action onDrained)
    {
        _stopping = true;
        _onDrained = onDrained;
        CheckDrained();
    }

    public int Poll()
    {
        int work = 0;
        if (!_stopping && BrokenReason is null)
        {
            for (int i = 0; i < PopBudget && BrokenReason is null; i++)
            {
                // The chain is walked into scratch space first: the head (and so the slot) is known only after the pop.
                var chain = new ChainBuffers(_scratch, SegmentsPerSlot);
                var status = _ring.TryPopChain(_memory, ref chain, out ushort head, out string? error);
                if (status == PopStatus.Empty) break;
                work++;
                if (status == PopStatus.Corrupt) Break(error!);
                else Process(head, ref chain);
            }
        }
        PublishAndNotify();
        if (_stopping) CheckDrained();
        return work;
    }

    public void Fault(Exception error)
    {
        Break($"internal error: {error.Message}");
        _inFlight = 0;
        CheckDrained();
    }

    public bool PrepareToSleep()
    {
        // Requests in flight do not keep the reactor awake: the I/O engine's eventfd wakes it on completion.
        if (_usedPending) return true;
        if (_stopping || BrokenReason is not null) return false;
        if (_kickFd < 0) return true;
        return _ring.EnableNotifications();
    }

    public void WokeUp()
    {
        if (!_stopping && BrokenReason is null) _ring.DisableNotifications();
    }

    private void PublishAndNotify()
    {
        if (!_usedPending) return;
        _usedPending = false;
        _ring.PublishUsed();
        if (_ring.ShouldSignal() && _callFd >= 0) EventFd.Signal(_callFd);
    }

    private void CheckDrained()
    {
        if (_inFlight != 0 || _onDrained is null) return;
        var done = _onDrained;
        _onDrained = null;
        done();
    }

    private void Break(string reason)
    {
        if (BrokenReason is not null) return;
        BrokenReason = reason;
        _log.LogError("{Device} queue {Queue}: guest error, queue stopped: {Reason}", _device.Name, Index, reason);
    }

    private void Process(ushort head, ref ChainBuffers chain)
    {
        ref Slot slot = ref _slots[head];
        if (slot.Busy)
        {
            Break($"descriptor {head} made available again while in flight");
            return;
        }
        if (chain.LastWritableByte == null)
        {
            Break($"request at descriptor {head} has no writable status byte");
            return;
        }
        // Move the walked buffers into the slot: they must stay valid while the backend works on them.
        IoVec* segments = _segments + head * SegmentsPerSlot;
        Buffer.MemoryCopy(_scratch, segments, SegmentsPerSlot * sizeof(IoVec), chain.Count * sizeof(IoVec));
        chain.Segments = segments;
        slot = new Slot { Busy = true, Status = chain.LastWritableByte, UsedLength = 1, Pending = 1, Result = VirtioBlk.StatusOk };
        _inFlight++;
        byte status = chain.Overflowed ? VirtioBlk.StatusIoErr : Dispatch(head, ref slot, segments, chain);
        if (status != VirtioBlk.StatusOk) slot.Result = status;
        // Drops the reference Process itself held; the request finishes once the backend's are gone too.
        CompleteSlot(head, ref slot);
    }

    /// <summary>Parses the request and hands it to the backend; returns a status only for requests that fail
    /// before reaching it.</summary>
    private byte Dispatch(ushort head, ref Slot slot, IoVec* segments, in ChainBuffers chain)
    {
        int count = chain.Count;
        segments[count - 1].Length--;            // the status byte is not a data buffer
        var header = new SegmentCursor(segments, 0, chain.ReadableCount);
        Span<byte> raw = stackalloc byte[VirtioBlk.HeaderLength];
        if (header.CopyTo(raw) != VirtioBlk.HeaderLength) return VirtioBlk.StatusIoErr;
        uint type = BinaryPrimitives.ReadUInt32LittleEndian(raw);
        ulong sector = BinaryPrimitives.ReadUInt64LittleEndian(raw[8..]);
        header.SkipEmpty();

        switch (type)
        {
            case VirtioBlk.TypeIn:
            {
                ulong length = chain.WritableBytes - 1;
                slot.UsedLength = (uint)Math.Min(length + 1, uint.MaxValue);
                return SubmitData(head, BlockOperation.Read, sector, length, segments + chain.ReadableCount, count - chain.ReadableCount);
            }
            case VirtioBlk.TypeOut:
            {
                ulong length = chain.ReadableBytes - VirtioBlk.HeaderLength;
                return SubmitData(head, BlockOperation.Write, sector, length, segments + header.Index, chain.ReadableCount - header.Index);
            }
            case VirtioBlk.TypeFlush:
                return Submit(head, new BlockRequest { Operation = BlockOperation.Flush, Tag = head });
            case VirtioBlk.TypeGetId:
            {
                var data = new SegmentCursor(segments, chain.ReadableCount, count);
                slot.UsedLength = (uint)data.CopyFrom(_device.SerialBytes) + 1;
                return VirtioBlk.StatusOk;
            }
            case VirtioBlk.TypeDiscard:
            case VirtioBlk.TypeWriteZeroes:
                return SubmitRanges(head, ref slot, type, ref header, chain.ReadableBytes - VirtioBlk.HeaderLength);
            default:
                return VirtioBlk.StatusUnsupported;
        }
    }

    private byte SubmitData(ushort head, BlockOperation operation, ulong sector, ulong length, IoVec* data, int dataCount)
    {
        if (!_device.TryByteRange(sector, length, out ulong offset)) return VirtioBlk.StatusIoErr;
        var flags = operation == BlockOperation.Write && !_device.Config.WriteCacheEnabled ? BlockRequestFlags.Fua : BlockRequestFlags.None;
        return Submit(head, new BlockRequest
        {
            Operation = operation,
            Flags = flags,
            Offset = offset,
            Length = length,
            Iov = data,
            IovCount = dataCount,
            Tag = head,
        });
    }

    /// <summary>DISCARD / WRITE_ZEROES: validates every range first (all or nothing), then submits each one.</summary>
    private byte SubmitRanges(ushort head, ref Slot slot, uint type, ref SegmentCursor cursor, ulong payloadBytes)
    {
        bool discard = type == VirtioBlk.TypeDiscard;
        if (payloadBytes == 0 || payloadBytes % VirtioBlk.RangeSegmentLength != 0) return VirtioBlk.StatusIoErr;
        ulong count = payloadBytes / VirtioBlk.RangeSegmentLength;
        if (count > _device.Options.MaxRangeSegments) return VirtioBlk.StatusIoErr;
        var ranges = stackalloc BlockRequest[(int)count];
        Span<byte> raw = stackalloc byte[VirtioBlk.RangeSegmentLength];
        for (int i = 0; i < (int)count; i++)
        {
            if (cursor.CopyTo(raw) != raw.Length) return VirtioBlk.StatusIoErr;
            ulong sector = BinaryPrimitives.ReadUInt64LittleEndian(raw);
            uint sectors = BinaryPrimitives.ReadUInt32LittleEndian(raw[8..]);
            uint flags = BinaryPrimitives.ReadUInt32LittleEndian(raw[12..]);
            // Discard must not carry UNMAP; write-zeroes knows only UNMAP (virtio 1.2 5.2.6.2).
            if (discard ? flags != 0 : (flags & ~VirtioBlk.RangeFlagUnmap) != 0) return VirtioBlk.StatusUnsupported;
            if (sectors > _device.Options.MaxRangeSectors) return VirtioBlk.StatusIoErr;
            if (!_device.TryByteRange(sector, (ulong)sectors << VirtioBlk.SectorShift, out ulong offset)) return VirtioBlk.StatusIoErr;
            ranges[i] = new BlockRequest
            {
                Operation = discard ? BlockOperation.Discard : BlockOperation.WriteZeroes,
                Flags = (flags & VirtioBlk.RangeFlagUnmap) != 0 ? BlockRequestFlags.Unmap : BlockRequestFlags.None,
                Offset = offset,
                Length = (ulong)sectors << VirtioBlk.SectorShift,
                Tag = head,
            };
        }
        if (_device.Info.ReadOnly) return VirtioBlk.StatusIoErr;
        slot.Pending += (int)count;
        for (int i = 0; i < (int)count; i++) _channel.Submit(ranges[i]);
        return VirtioBlk.StatusOk;
    }

    private byte Submit(ushort head, in BlockRequest request)
    {
        _slots[head].Pending++;
        _channel.Submit(request);
        return VirtioBlk.StatusOk;
    }

    public void Complete(ulong tag, BlockStatus status)
    {
        ref Slot slot = ref _slots[(int)tag];
        if (status != BlockStatus.Ok && slot.Result == VirtioBlk.StatusOk)
            slot.Result = status == BlockStatus.Unsupported ? VirtioBlk.StatusUnsupported : VirtioBlk.StatusIoErr;
        CompleteSlot((ushort)tag, ref slot);
    }

    private void CompleteSlot(ushort head, ref Slot slot)
    {
        if (--slot.Pending > 0) return;
        // The status byte's address was validated when the chain was walked; the guest cannot move it.
        *slot.Status = slot.Result;
        _ring.PushUsed(head, slot.Result == VirtioBlk.StatusOk ? slot.UsedLength : 1);
        slot.Busy = false;
        _inFlight--;
        _usedPending = true;
    }

    public void Dispose()
    {
        _channel.Dispose();
        _segmentBuffer.Dispose();
    }
}
