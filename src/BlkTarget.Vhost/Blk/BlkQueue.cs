using System.Buffers.Binary;
using BlkTarget.Storage;
using BlkTarget.Vhost.Device;
using BlkTarget.Vhost.Protocol;
using BlkTarget.Vhost.Qos;
using BlkTarget.Vhost.Queues;
using BlkTarget.Vhost.Scsi.Atomicity;
using BlkTarget.Vhost.Stats;
using Microsoft.Extensions.Logging;

namespace BlkTarget.Vhost.Blk;

/// <summary>
/// One running virtio-blk queue: turns descriptor chains into storage requests whose iovecs point into guest
/// memory, and completes them through the used ring. Request state lives in slots indexed by the chain's head
/// descriptor (unique while in flight), allocated once at queue start: nothing is allocated per request.
/// <para>
/// On a disk that is shared (<see cref="BlkDeviceContext.Gate"/>, which a SCSI export of the same disk may use for
/// COMPARE AND WRITE), writes, write-zeroes and discards take part in the disk's <see cref="CompareAndWriteGate"/>
/// exactly as SCSI writes do: each counts in this queue's <see cref="WriteTracker"/> while in flight, and one that
/// overlaps a range a COMPARE AND WRITE holds is deferred (its buffers stay in the slot) and dispatched again on
/// later polls until it passes. Without that, a blk guest's write could land between a COMPARE AND WRITE's read and
/// its write, and the cluster lock it implements would break.
/// </para>
/// </summary>
public sealed unsafe class BlkQueue : VirtqueueWorker, IBlockCompletionSink
{
    private struct Slot
    {
        public byte* Status;
        public uint UsedLength;
        public int Pending;
        public byte Result;
        // Statistics: what the request was, the data it moves, why it failed.
        public IoOp Op;
        public IoErrorKind Error;
        public ulong Bytes;
        /// <summary>The write counts in <see cref="_tracker"/> until the request completes.</summary>
        public bool WriteBegun;
        /// <summary>The request's buffers, kept while it is deferred (they live in the slot's segment storage).</summary>
        public ChainBuffers Chain;
    }

    private readonly BlkDeviceContext _device;
    private readonly IBlockChannel _channel;
    private readonly bool _prefetchReads;
    private readonly Slot[] _slots;
    private readonly QueueCounters _counters;
    /// <summary>FLUSH was not negotiated: the driver never flushes (Linux then assumes write-through), so every
    /// write must be durable when it completes.</summary>
    private readonly bool _noFlush;
    /// <summary>The shared disk's COMPARE AND WRITE gate, or null (a disk only this export writes).</summary>
    private readonly CompareAndWriteGate? _gate;
    private readonly WriteTracker? _tracker;
    /// <summary>Heads of deferred requests, in arrival order (<see cref="_gate"/> only).</summary>
    private readonly ushort[] _deferred = [];
    private int _deferredCount;

    public BlkQueue(QueueStartInfo start, BlkDeviceContext device, ILogger log) : base(start, device.Name, log)
    {
        _device = device;
        _noFlush = (start.AckedFeatures & VirtioFeatures.Bit(VirtioBlk.FeatureFlush)) == 0;
        _slots = new Slot[Ring.Size];
        _counters = device.Counters[start.Index];
        _channel = device.Backend.OpenChannel(start.Io, this, (int)Ring.Size * (int)Math.Max(1, device.Options.MaxRangeSegments));
        _prefetchReads = _channel.PrefetchesReads;
        _gate = device.Gate;
        if (_gate is not null)
        {
            _tracker = new WriteTracker((int)Ring.Size);
            _deferred = new ushort[Ring.Size];
            // Before this queue's first write (the gate's proof needs the registration first).
            _gate.Register(_tracker);
        }
    }

    protected override void Process(ushort head, ref ChainBuffers chain)
    {
        if (chain.LastWritableByte == null)
        {
            Abandon(head, $"request at descriptor {head} has no writable status byte");
            return;
        }
        ref Slot slot = ref _slots[head];
        slot = new Slot { Status = chain.LastWritableByte, UsedLength = 1, Pending = 1, Result = VirtioBlk.StatusOk, Op = IoOp.Other };
        _counters.Begin();
        if (!chain.Overflowed && _gate is not null && !TryAdmit(head, chain))
        {
            // Nothing consumed yet; Process's own reference stays until the retry that dispatches it (PollDeferred).
            slot.Chain = chain;
            _deferred[_deferredCount++] = head;
            return;
        }
        byte status = chain.Overflowed ? VirtioBlk.StatusIoErr : Dispatch(head, ref slot, chain.Segments, chain);
        Finish(head, ref slot, status);
    }

    /// <summary>The end of a dispatch: records a status the request failed with before reaching the backend, and
    /// drops the reference the dispatch held.</summary>
    private void Finish(ushort head, ref Slot slot, byte status)
    {
        if (status != VirtioBlk.StatusOk)
        {
            slot.Result = status;
            if (slot.Error == IoErrorKind.None)
                slot.Error = status == VirtioBlk.StatusUnsupported ? IoErrorKind.Unsupported : IoErrorKind.Invalid;
        }
        // Drops the reference Process itself held; the request finishes once the backend's are gone too.
        CompleteSlot(head, ref slot);
    }

    /// <summary>The next request is a read: lets the channel start loading its data (RAM disks).</summary>
    protected override void Prefetch(in ChainBuffers chain)
    {
        if (!_prefetchReads || chain.Overflowed || chain.WritableBytes < 1) return;
        Span<byte> raw = stackalloc byte[VirtioBlk.HeaderLength];
        if (!chain.TryPeekReadable(0, raw) || BinaryPrimitives.ReadUInt32LittleEndian(raw) != VirtioBlk.TypeIn) return;
        if (_device.TryByteRange(BinaryPrimitives.ReadUInt64LittleEndian(raw[8..]), chain.WritableBytes - 1, out ulong offset))
            _channel.PrefetchRead(offset, chain.WritableBytes - 1);
    }

    /// <summary>QoS: reads and writes take tokens from the export's and the disk's limits; everything else (and
    /// requests too malformed to say, which fail in <see cref="Process"/> anyway) passes.</summary>
    protected override bool Admit(ushort head, in ChainBuffers chain, long now, out long waitTicks)
    {
        waitTicks = 0;
        if (!QosLimiter.AnyLimited) return true;
        var export = _device.Options.ExportQos;
        var disk = _device.Options.DiskQos;
        if (export is not { IsLimited: true } && disk is not { IsLimited: true }) return true;
        if (chain.Overflowed || chain.LastWritableByte == null || chain.ReadableBytes < VirtioBlk.HeaderLength) return true;
        // The request type, read without consuming the segments (a SegmentCursor would trim them, and Process
        // parses the same chain again once the request is admitted).
        Span<byte> raw = stackalloc byte[sizeof(uint)];
        if (!chain.TryPeekReadable(0, raw)) return true;
        var (direction, bytes) = BinaryPrimitives.ReadUInt32LittleEndian(raw) switch
        {
            VirtioBlk.TypeIn => (QosDirection.Read, chain.WritableBytes - 1),
            VirtioBlk.TypeOut => (QosDirection.Write, chain.ReadableBytes - VirtioBlk.HeaderLength),
            _ => (QosDirection.None, 0UL),
        };
        return QosLimiter.TryAdmit(export, disk, now, direction, bytes, out waitTicks);
    }

    /// <summary>Parses the request and hands it to the backend; returns a status only for requests that fail
    /// before reaching it. Consumes the header and range buffers in place: runs once per request.</summary>
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
                // The status byte usually has a descriptor of its own, which leaves an empty iovec at the end: hand
                // the backend only the data (an empty iovec at an odd address made O_DIRECT backends bounce).
                int dataCount = count - chain.ReadableCount;
                if (dataCount > 0 && segments[count - 1].Length == 0) dataCount--;
                (slot.Op, slot.Bytes) = (IoOp.Read, length);
                return SubmitData(head, BlockOperation.Read, sector, length, segments + chain.ReadableCount, dataCount);
            }
            case VirtioBlk.TypeOut:
            {
                ulong length = chain.ReadableBytes - VirtioBlk.HeaderLength;
                (slot.Op, slot.Bytes) = (IoOp.Write, length);
                return SubmitData(head, BlockOperation.Write, sector, length, segments + header.Index, chain.ReadableCount - header.Index);
            }
            case VirtioBlk.TypeFlush:
                slot.Op = IoOp.Flush;
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

    /// <summary>The guest sees no volatile write cache: it turned it off (CONFIG_WCE) or cannot flush at all.</summary>
    private bool WriteThrough => _noFlush || !_device.Config.WriteCacheEnabled;

    private byte SubmitData(ushort head, BlockOperation operation, ulong sector, ulong length, IoVec* data, int dataCount)
    {
        if (!_device.TryByteRange(sector, length, out ulong offset)) return OutOfRange(head);
        var flags = operation == BlockOperation.Write && WriteThrough ? BlockRequestFlags.Fua : BlockRequestFlags.None;
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
        slot.Op = discard ? IoOp.Discard : IoOp.WriteZeroes;
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
            if (!_device.TryByteRange(sector, (ulong)sectors << VirtioBlk.SectorShift, out ulong offset)) return OutOfRange(head);
            slot.Bytes += (ulong)sectors << VirtioBlk.SectorShift;
            ranges[i] = new BlockRequest
            {
                Operation = discard ? BlockOperation.Discard : BlockOperation.WriteZeroes,
                // With the write cache off, zeroing is a write like any other: durable when it completes.
                Flags = ((flags & VirtioBlk.RangeFlagUnmap) != 0 ? BlockRequestFlags.Unmap : BlockRequestFlags.None)
                    | (!discard && WriteThrough ? BlockRequestFlags.Fua : BlockRequestFlags.None),
                Offset = offset,
                Length = (ulong)sectors << VirtioBlk.SectorShift,
                Tag = head,
            };
        }
        if (_device.Info.ReadOnly)
        {
            slot.Error = IoErrorKind.ReadOnly;
            return VirtioBlk.StatusIoErr;
        }
        slot.Pending += (int)count;
        for (int i = 0; i < (int)count; i++) _channel.Submit(ranges[i]);
        return VirtioBlk.StatusOk;
    }

    /// <summary>
    /// A shared disk: admits the request past the COMPARE AND WRITE gate, or false (nothing done) while a COMPARE AND
    /// WRITE holds a range it writes. A write, write-zeroes or discard counts in this queue's tracker first (a full
    /// fence), then reads the gate: the order <see cref="CompareAndWriteGate"/>'s proof needs. Reads the header and
    /// ranges without consuming them (<see cref="ChainBuffers.TryPeekReadable"/>), so a deferred request is admitted again from scratch;
    /// whatever Dispatch would refuse (bad lengths, ranges beyond the disk) is let through for Dispatch to fail.
    /// Dispatch reads the header again from guest memory: a guest that rewrites its own request in between can only
    /// misplace its own write, which it could as well have sent to that range after the COMPARE AND WRITE (the gate
    /// orders cooperating initiators; it does not defend the disk against one that is not).
    /// </summary>
    private bool TryAdmit(ushort head, in ChainBuffers chain)
    {
        Span<byte> raw = stackalloc byte[VirtioBlk.HeaderLength];
        if (!chain.TryPeekReadable(0, raw)) return true;
        uint type = BinaryPrimitives.ReadUInt32LittleEndian(raw);
        ulong payload = chain.ReadableBytes - VirtioBlk.HeaderLength;
        ulong blockSize = _device.Info.BlockSize;
        if (type == VirtioBlk.TypeOut)
        {
            if (!_device.TryByteRange(BinaryPrimitives.ReadUInt64LittleEndian(raw[8..]), payload, out ulong offset)) return true;
            _tracker!.Begin(head);
            if (_gate!.Blocks(offset / blockSize, payload / blockSize)) return Refuse(head);
        }
        else if (type is VirtioBlk.TypeDiscard or VirtioBlk.TypeWriteZeroes)
        {
            if (payload == 0 || payload % VirtioBlk.RangeSegmentLength != 0) return true;
            ulong count = payload / VirtioBlk.RangeSegmentLength;
            if (count > _device.Options.MaxRangeSegments) return true;
            _tracker!.Begin(head);
            for (ulong i = 0; i < count; i++)
            {
                if (!chain.TryPeekReadable(VirtioBlk.HeaderLength + i * VirtioBlk.RangeSegmentLength, raw)) break;
                ulong bytes = (ulong)BinaryPrimitives.ReadUInt32LittleEndian(raw[8..]) << VirtioBlk.SectorShift;
                if (!_device.TryByteRange(BinaryPrimitives.ReadUInt64LittleEndian(raw), bytes, out ulong offset)) continue;
                if (_gate!.Blocks(offset / blockSize, bytes / blockSize)) return Refuse(head);
            }
        }
        else
        {
            return true;
        }
        _slots[head].WriteBegun = true;
        return true;
    }

    private bool Refuse(ushort head)
    {
        _tracker!.End(head);
        return false;
    }

    protected override bool HasDeferredWork => _deferredCount > 0;

    /// <summary>Dispatches the deferred requests again, in arrival order; those deferred again stay.</summary>
    protected override int PollDeferred()
    {
        if (_deferredCount == 0) return 0;
        int done = 0, kept = 0;
        for (int i = 0; i < _deferredCount; i++)
        {
            ushort head = _deferred[i];
            ref Slot slot = ref _slots[head];
            if (!TryAdmit(head, slot.Chain))
            {
                _deferred[kept++] = head;
                continue;
            }
            Finish(head, ref slot, Dispatch(head, ref slot, slot.Chain.Segments, slot.Chain));
            done++;
        }
        _deferredCount = kept;
        return done;
    }

    /// <summary>A faulted queue completes nothing any more: its writes stop counting for COMPARE AND WRITE once the
    /// backend has returned every operation, and deferred requests are dropped (they never reached it).</summary>
    protected override void OnFaultSettled()
    {
        _deferredCount = 0;
        _tracker?.EndAll();
    }

    private byte OutOfRange(ushort head)
    {
        _slots[head].Error = IoErrorKind.OutOfRange;
        return VirtioBlk.StatusIoErr;
    }

    private byte Submit(ushort head, in BlockRequest request)
    {
        _slots[head].Pending++;
        _channel.Submit(request);
        return VirtioBlk.StatusOk;
    }

    public override int BackendInFlight => _channel.InFlight;

    public void Complete(ulong tag, BlockStatus status)
    {
        // A faulted queue writes nothing into guest memory any more: the completion only ends the backend's use of
        // the buffers, and the channel counts that.
        if (Faulted) return;
        // A completion for a request not in flight is a backend bug: it would write a stale status byte into memory
        // the guest may have reused. Throwing faults this queue (the caller reports it) instead.
        if (tag >= (ulong)_slots.Length || _slots[(int)tag].Pending <= 0)
            throw new InvalidOperationException($"backend completed tag {tag}, which is not in flight");
        ref Slot slot = ref _slots[(int)tag];
        if (status != BlockStatus.Ok && slot.Result == VirtioBlk.StatusOk)
        {
            slot.Result = status == BlockStatus.Unsupported ? VirtioBlk.StatusUnsupported : VirtioBlk.StatusIoErr;
            slot.Error = IoErrorKinds.From(status);
        }
        CompleteSlot((ushort)tag, ref slot);
    }

    private void CompleteSlot(ushort head, ref Slot slot)
    {
        if (--slot.Pending > 0) return;
        if (slot.WriteBegun) _tracker!.End(head);
        // The status byte's address was validated when the chain was walked; the guest cannot move it.
        *slot.Status = slot.Result;
        // The driver reads the status next (and reuses the line, which usually holds its request header too).
        CacheLines.Demote(slot.Status);
        bool ok = slot.Result == VirtioBlk.StatusOk;
        CompleteRequest(head, ok ? slot.UsedLength : 1, _counters, slot.Op, slot.Bytes, ok ? IoErrorKind.None : slot.Error);
    }

    protected override void CancelBackend() => _channel.Cancel();

    public override void Dispose()
    {
        _channel.Dispose();
        if (_tracker is not null)
        {
            _tracker.EndAll();
            _gate!.Unregister(_tracker);
        }
        base.Dispose();
    }
}
