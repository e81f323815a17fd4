using System.Buffers.Binary;
using BlkTarget.Storage;
using BlkTarget.Storage.Interop;
using BlkTarget.Storage.Offload;
using BlkTarget.Vhost.Blk;
using BlkTarget.Vhost.Device;
using BlkTarget.Vhost.Queues;
using BlkTarget.Vhost.Scsi.Atomicity;
using BlkTarget.Vhost.Stats;
using Microsoft.Extensions.Logging;

namespace BlkTarget.Vhost.Scsi;

/// <summary>
/// One running virtio-scsi request queue. A request is virtio_scsi_cmd_req (lun, tag, task attributes, CDB) plus
/// data-out in device-readable buffers, then virtio_scsi_cmd_resp (sense length, residual, status, response,
/// sense) plus data-in in device-writable buffers; either part may span descriptors. The LUN the request
/// addresses executes the CDB; reads and writes go to its backend with iovecs straight into guest memory.
/// Request state lives in slots indexed by the head descriptor: nothing is allocated per request.
/// <para>
/// Writes take part in the COMPARE AND WRITE gate of their disk (<see cref="CompareAndWriteGate"/>): each counts in
/// this queue's <see cref="WriteTracker"/> while in flight, and one that overlaps a range a COMPARE AND WRITE holds is
/// deferred: its CDB is kept in the slot and it is executed again on the next polls until it passes (the reactor
/// keeps polling meanwhile rather than sleeping). COMPARE AND WRITE itself runs in <see cref="CompareAndWriteRunner"/>.
/// </para>
/// </summary>
public sealed unsafe class ScsiRequestQueue : VirtqueueWorker, IBlockCompletionSink, IScsiBlockSubmitter, ICompareAndWriteHost
{
    private struct Slot
    {
        public int Pending;
        /// <summary>Response buffers: whole segments [RespFirst, RespLastIndex) then (RespLastBase, RespLastLength).</summary>
        public int RespFirst;
        public int RespLastIndex;
        public byte* RespLastBase;
        public nuint RespLastLength;
        public IoVec* Segments;
        /// <summary>Bytes of response the buffers hold (the full struct, or less for a malformed request).</summary>
        public int RespBytes;
        public int SenseSize;
        public int Lun;
        public byte Status;
        public byte Response;
        public SenseCode Sense;
        public BlockOperation Operation;
        public ulong DataInBytes;
        public ulong DataInWritten;
        public ulong DataOutBytes;
        public ulong DataOutConsumed;
        // WRITE SAME with a pattern: the rest of the range, written one piece at a time from the slot's pattern page.
        public IBlockChannel? PatternChannel;
        public ulong PatternOffset;
        public ulong PatternRemaining;
        /// <summary>Bytes of the pattern page one iovec covers (whole blocks).</summary>
        public uint PatternUnit;
        public BlockRequestFlags PatternFlags;
        /// <summary>Inside <see cref="Pump"/>'s submit: a completion there only marks the piece done.</summary>
        public bool Pumping;
        public bool PieceDone;
        /// <summary>The command counts in <see cref="_tracker"/> until it completes.</summary>
        public bool WriteBegun;
        // A deferred command, to execute again: its CDB is in _cdbs, its buffers here.
        public ScsiTargetNode? Target;
        public int CdbSize;
        public IoVec* DataOut;
        public int DataOutCount;
        public IoVec* DataIn;
        public int DataInCount;
        // Statistics: the LUN's (or the device's unaddressed) counters, what the command did, the data it moved.
        public QueueCounters? Counters;
        public IoOp Op;
        public IoErrorKind Error;
        public ulong Bytes;
    }

    /// <summary>Iovecs of one WRITE SAME piece, each pointing at the slot's pattern page.</summary>
    private const int PieceIovecs = 256;

    private readonly ScsiDeviceContext _device;
    private readonly int _queue;
    private readonly Slot[] _slots;
    /// <summary>Per LUN slot (<see cref="ScsiLun.Index"/>): this queue's channel to it, opened on first use, and the LUN
    /// it was opened for (a slot is reused after a removal).</summary>
    private readonly IBlockChannel?[] _channels = new IBlockChannel?[ScsiDeviceContext.MaxLuns];
    private readonly ScsiLun?[] _owners = new ScsiLun?[ScsiDeviceContext.MaxLuns];
    private readonly IoContext _io;
    private readonly int _channelCapacity;
    /// <summary>LUN removals waiting for this queue (<see cref="ReleaseLun"/>): from the management thread.</summary>
    private readonly System.Collections.Concurrent.ConcurrentQueue<(ScsiLun Lun, CountdownEvent Done)> _releases = new();
    /// <summary>Removals taken from <see cref="_releases"/> whose commands have not all completed yet.</summary>
    private readonly List<(ScsiLun Lun, CountdownEvent Done)> _releasing = [];
    private bool _disposed;
    private readonly BlockingJobChannel _jobs;
    private readonly byte[] _scratch;
    /// <summary>Per slot: a page the WRITE SAME block is repeated in (page aligned, so O_DIRECT needs no bounce),
    /// then <see cref="PieceIovecs"/> iovecs. Reserved up front and committed by the kernel only where a slot
    /// ever writes a pattern.</summary>
    private readonly MappedMemory _patterns;
    private readonly int _patternBytes;
    private readonly nuint _patternStride;
    private readonly WriteTracker _tracker;
    /// <summary>The gates <see cref="_tracker"/> is registered with (one per disk this queue opened a channel to).</summary>
    private readonly List<CompareAndWriteGate> _gates = [];
    private readonly CompareAndWriteRunner _compareAndWrite;
    /// <summary>Heads of commands deferred by a COMPARE AND WRITE gate, in arrival order.</summary>
    private readonly ushort[] _deferred;
    private int _deferredCount;
    /// <summary>Per slot, <see cref="VirtioScsi.MaxCdbSize"/> bytes: the CDB of a deferred command.</summary>
    private readonly byte[] _cdbs;

    public ScsiRequestQueue(QueueStartInfo start, ScsiDeviceContext device, ILogger log) : base(start, device.Name, log)
    {
        _device = device;
        _queue = start.Index - VirtioScsi.FirstRequestQueue;
        _slots = new Slot[Ring.Size];
        _scratch = new byte[device.ScratchSize];
        _io = start.Io;
        // One page holds a whole number of blocks of every LUN (512 or 4096, hot-added ones too).
        _patternBytes = 4096;
        _patternStride = (nuint)((_patternBytes + PieceIovecs * sizeof(IoVec) + 4095) & ~4095);
        _patterns = MappedMemory.MapAnonymous((ulong)Ring.Size * _patternStride);
        _jobs = new BlockingJobChannel(start.Io, this);
        _tracker = new WriteTracker((int)Ring.Size);
        _compareAndWrite = new CompareAndWriteRunner(this, (int)Ring.Size);
        _deferred = new ushort[Ring.Size];
        _cdbs = new byte[Ring.Size * VirtioScsi.MaxCdbSize];
        try
        {
            _channelCapacity = (int)Ring.Size * (int)Math.Max(1u, ScsiLimits.For(512).MaxUnmapDescriptors);
            // Registered before the table is read: a LUN removed meanwhile is either not in the table read below or
            // released by this queue like by every other.
            device.Register(this);
            foreach (var lun in device.Luns) ChannelFor(lun);
        }
        catch
        {
            device.Unregister(this);
            foreach (var c in _channels) c?.Dispose();
            foreach (var gate in _gates) gate.Unregister(_tracker);
            _jobs.Dispose();
            _patterns.Dispose();
            _compareAndWrite.Dispose();
            base.Dispose();
            throw;
        }
    }

    /// <summary>QoS: READ and WRITE commands (6/10/12/16) take tokens from the export's limits and from those of the
    /// addressed LUN's disk; every other command (and requests too malformed to say, which fail in
    /// <see cref="Process"/> anyway) passes. Bytes are the command's data-in or data-out buffer length.</summary>
    protected override bool Admit(ushort head, in ChainBuffers chain, long now, out long waitTicks)
    {
        waitTicks = 0;
        if (!Qos.QosLimiter.AnyLimited) return true;
        int requestLength = VirtioScsi.RequestHeaderLength + _device.Config.CdbSize;
        ulong respSize = (ulong)(VirtioScsi.ResponseHeaderLength + _device.Config.SenseSize);
        if (chain.Overflowed || chain.ReadableBytes < (ulong)requestLength) return true;
        Span<byte> request = stackalloc byte[VirtioScsi.RequestHeaderLength + 1];
        if (!chain.TryPeekReadable(0, request)) return true;
        var direction = request[VirtioScsi.RequestHeaderLength] switch
        {
            ScsiOp.Read6 or ScsiOp.Read10 or ScsiOp.Read12 or ScsiOp.Read16 => Qos.QosDirection.Read,
            ScsiOp.Write6 or ScsiOp.Write10 or ScsiOp.Write12 or ScsiOp.Write16 => Qos.QosDirection.Write,
            _ => Qos.QosDirection.None,
        };
        if (direction == Qos.QosDirection.None) return true;
        var address = ScsiAddress.Parse(request[..8]);
        var lun = address.Valid && address.Lun != ushort.MaxValue ? _device.FindTarget(address.Target)?.Find(address.Lun) : null;
        ulong bytes = direction == Qos.QosDirection.Read
            ? (chain.WritableBytes > respSize ? chain.WritableBytes - respSize : 0)
            : chain.ReadableBytes - (ulong)requestLength;
        return Qos.QosLimiter.TryAdmit(_device.Options.ExportQos, lun?.DiskQos, now, direction, bytes, out waitTicks);
    }

    protected override void Process(ushort head, ref ChainBuffers chain)
    {
        IoVec* segments = chain.Segments;
        int senseSize = _device.Config.SenseSize;
        int cdbSize = _device.Config.CdbSize;
        int respSize = VirtioScsi.ResponseHeaderLength + senseSize;

        // The response comes first in the writable buffers; data-in follows it.
        int j = chain.ReadableCount;
        ulong have = 0;
        while (j < chain.Count && have < (ulong)respSize) have += segments[j++].Length;
        if (have < VirtioScsi.ResponseHeaderLength)
        {
            Abandon(head, $"request at descriptor {head} has no room for a virtio-scsi response");
            return;
        }
        ref Slot slot = ref _slots[head];
        slot = new Slot
        {
            Pending = 1,
            RespFirst = chain.ReadableCount,
            RespLastIndex = j - 1,
            Segments = segments,
            SenseSize = senseSize,
            Lun = -1,
            Response = VirtioScsi.Ok,
            Op = IoOp.Other,
        };
        ref IoVec last = ref segments[j - 1];
        slot.RespLastBase = last.Base;
        int dataInStart = j;
        if (have > (ulong)respSize)
        {
            // The last response buffer also holds the start of data-in: split it.
            nuint excess = (nuint)(have - (ulong)respSize);
            slot.RespLastLength = last.Length - excess;
            last.Base += slot.RespLastLength;
            last.Length = excess;
            dataInStart = j - 1;
            have = (ulong)respSize;
        }
        else
        {
            slot.RespLastLength = last.Length;
        }
        slot.RespBytes = (int)have;

        if (chain.Overflowed || slot.RespBytes < respSize)
        {
            slot.Response = VirtioScsi.Failure;
            CompleteSlot(head, ref slot);
            return;
        }

        // Copy the request header and CDB before looking at them: the guest may change its buffers meanwhile.
        int requestLength = VirtioScsi.RequestHeaderLength + cdbSize;
        Span<byte> request = stackalloc byte[VirtioScsi.RequestHeaderLength + VirtioScsi.MaxCdbSize];
        var header = new SegmentCursor(segments, 0, chain.ReadableCount);
        if (header.CopyTo(request[..requestLength]) != requestLength)
        {
            slot.Response = VirtioScsi.Failure;
            CompleteSlot(head, ref slot);
            return;
        }
        header.SkipEmpty();

        var address = ScsiAddress.Parse(request[..8]);
        var target = address.Valid ? _device.FindTarget(address.Target) : null;
        if (target is null)
        {
            slot.Response = VirtioScsi.BadTarget;
            CompleteSlot(head, ref slot);
            return;
        }

        var task = new ScsiTask
        {
            Cdb = request.Slice(VirtioScsi.RequestHeaderLength, cdbSize),
            DataOut = segments + header.Index,
            DataOutCount = chain.ReadableCount - header.Index,
            DataOutBytes = chain.ReadableBytes - (ulong)requestLength,
            DataIn = segments + dataInStart,
            DataInCount = chain.Count - dataInStart,
            DataInBytes = chain.WritableBytes - (ulong)respSize,
            Scratch = _scratch,
            Submitter = this,
            Tag = head,
            Response = VirtioScsi.Ok,
        };
        slot.DataInBytes = task.DataInBytes;
        slot.DataOutBytes = task.DataOutBytes;
        var lun = address.Lun == ushort.MaxValue ? null : target.Find(address.Lun);
        if (lun is null)
        {
            slot.Counters = _device.UnaddressedCounters[_queue];
            slot.Counters.Begin();
            target.ExecuteForMissingLun(ref task);
        }
        else
        {
            slot.Counters = lun.Counters[_queue];
            slot.Counters.Begin();
            slot.Lun = lun.Index;
            lun.AddInFlight(_queue, 1);
            task.Channel = _owners[lun.Index] == lun ? _channels[lun.Index]! : ChannelFor(lun);
            lun.Execute(ref task, target);
            if (task.Deferred)
            {
                Defer(head, ref slot, ref task, target);
                return;
            }
        }
        FinishExecution(head, ref slot, ref task);
    }

    /// <summary>Takes the outcome of an executed command into its slot and drops the hold execution had on it.</summary>
    private void FinishExecution(ushort head, ref Slot slot, ref ScsiTask task)
    {
        // Completions of submitted requests may already have arrived (synchronous backends): merge, do not overwrite.
        if (slot.Status == ScsiStatus.Good) slot.Status = task.Status;
        if (slot.Sense == default) slot.Sense = task.Sense;
        slot.Response = task.Response;
        if (slot.Status == ScsiStatus.Good) slot.DataInWritten = task.DataInWritten;
        slot.DataOutConsumed = task.Status == ScsiStatus.Good ? task.DataOutConsumed : 0;
        CompleteSlot(head, ref slot);
    }

    /// <summary>Keeps a command a COMPARE AND WRITE gate deferred (nothing submitted): its CDB and buffers, to execute
    /// again from <see cref="PollDeferred"/>. It stays in flight on its LUN meanwhile.</summary>
    private void Defer(ushort head, ref Slot slot, ref ScsiTask task, ScsiTargetNode target)
    {
        slot.Target = target;
        slot.CdbSize = task.Cdb.Length;
        task.Cdb.CopyTo(_cdbs.AsSpan(head * VirtioScsi.MaxCdbSize, VirtioScsi.MaxCdbSize));
        slot.DataOut = task.DataOut;
        slot.DataOutCount = task.DataOutCount;
        slot.DataIn = task.DataIn;
        slot.DataInCount = task.DataInCount;
        _deferred[_deferredCount++] = head;
    }

    /// <summary>Executes the deferred commands again, in arrival order; those deferred again stay.</summary>
    private int RetryDeferred()
    {
        int done = 0, kept = 0;
        for (int i = 0; i < _deferredCount; i++)
        {
            ushort head = _deferred[i];
            ref Slot slot = ref _slots[head];
            var lun = _owners[slot.Lun]!;
            var task = new ScsiTask
            {
                Cdb = _cdbs.AsSpan(head * VirtioScsi.MaxCdbSize, slot.CdbSize),
                DataOut = slot.DataOut,
                DataOutCount = slot.DataOutCount,
                DataOutBytes = slot.DataOutBytes,
                DataIn = slot.DataIn,
                DataInCount = slot.DataInCount,
                DataInBytes = slot.DataInBytes,
                Scratch = _scratch,
                Submitter = this,
                Tag = head,
                Response = VirtioScsi.Ok,
                Channel = _channels[slot.Lun],
            };
            lun.Execute(ref task, slot.Target!);
            if (task.Deferred)
            {
                _deferred[kept++] = head;
                continue;
            }
            slot.Target = null;
            FinishExecution(head, ref slot, ref task);
            done++;
        }
        _deferredCount = kept;
        return done;
    }

    public bool TryBeginWrite(ushort tag, CompareAndWriteGate gate, scoped ReadOnlySpan<BlockRange> ranges)
    {
        _tracker.Begin(tag);
        foreach (var range in ranges)
        {
            if (!gate.Blocks(range.Lba, range.Blocks)) continue;
            _tracker.End(tag);
            return false;
        }
        _slots[tag].WriteBegun = true;
        return true;
    }

    public void SubmitCompareAndWrite(ushort tag, IBlockChannel channel, CompareAndWriteGate gate, BlockRange range, uint blockSize,
        IoVec* dataOut, int dataOutCount, BlockRequestFlags writeFlags)
    {
        _slots[tag].Pending++;
        _compareAndWrite.Start(tag, gate, channel, range, blockSize, dataOut, dataOutCount, writeFlags);
    }

    void ICompareAndWriteHost.Finish(ushort tag, SenseCode failure)
    {
        ref Slot slot = ref _slots[tag];
        if (failure != SenseCode.None && slot.Status == ScsiStatus.Good)
        {
            slot.Status = ScsiStatus.CheckCondition;
            slot.Sense = failure;
        }
        CompleteSlot(tag, ref slot);
    }

    public void Submit(ushort tag, IBlockChannel channel, in BlockRequest request)
    {
        ref Slot slot = ref _slots[tag];
        slot.Pending++;
        slot.Operation = request.Operation;
        slot.Op = IoOps.From(request.Operation);
        slot.Bytes += request.Length;
        channel.Submit(request);
    }

    public void SubmitBlocking(ushort tag, BlockingJobQueue queue, IBlockingJob job)
    {
        ref Slot slot = ref _slots[tag];
        slot.Pending++;
        slot.Operation = BlockOperation.Write;
        _jobs.Run(queue, tag, job);
    }

    protected override void CancelBackend()
    {
        foreach (var channel in _channels) channel?.Cancel();
    }

    public void SubmitRepeated(ushort tag, IBlockChannel channel, ReadOnlySpan<byte> block, ulong offset, ulong length, BlockRequestFlags flags)
    {
        ref Slot slot = ref _slots[tag];
        byte* page = PatternPage(tag);
        int copies = _patternBytes / block.Length;
        for (int i = 0; i < copies; i++) block.CopyTo(new Span<byte>(page + i * block.Length, block.Length));
        slot.PatternChannel = channel;
        slot.PatternUnit = (uint)(copies * block.Length);
        slot.PatternOffset = offset;
        slot.PatternRemaining = length;
        slot.PatternFlags = flags;
        slot.Operation = BlockOperation.Write;
        slot.Op = IoOp.Write;
        Pump(tag, ref slot);
    }

    private byte* PatternPage(ushort tag) => (byte*)_patterns.Pointer + tag * _patternStride;

    /// <summary>
    /// Submits the next pieces of a WRITE SAME with a pattern: one write of up to <see cref="PieceIovecs"/> iovecs
    /// over the pattern page at a time, the next when it completes (a backend that completes inside Submit is
    /// served by the loop, not by recursion). Bounded memory per slot, whatever the length of the range.
    /// </summary>
    private void Pump(ushort tag, ref Slot slot)
    {
        byte* page = PatternPage(tag);
        var iov = (IoVec*)(page + _patternBytes);
        while (slot.PatternRemaining > 0)
        {
            ulong piece = Math.Min(slot.PatternRemaining, (ulong)slot.PatternUnit * PieceIovecs);
            int count = 0;
            for (ulong at = 0; at < piece; at += slot.PatternUnit)
                iov[count++] = new IoVec(page, (nuint)Math.Min(slot.PatternUnit, piece - at));
            var request = new BlockRequest
            {
                Operation = BlockOperation.Write,
                Flags = slot.PatternFlags,
                Offset = slot.PatternOffset,
                Length = piece,
                Iov = iov,
                IovCount = count,
                Tag = tag,
            };
            slot.PatternOffset += piece;
            slot.PatternRemaining -= piece;
            slot.Bytes += piece;
            slot.Pending++;
            slot.Pumping = true;
            slot.PieceDone = false;
            slot.PatternChannel!.Submit(request);
            slot.Pumping = false;
            if (!slot.PieceDone) return;
        }
    }

    public override int BackendInFlight
    {
        get
        {
            int sum = _jobs.InFlight;
            foreach (var channel in _channels) sum += channel?.InFlight ?? 0;
            return sum;
        }
    }

    public void Complete(ulong tag, BlockStatus status)
    {
        // A faulted queue writes nothing into guest memory any more: the completion only ends the backend's use of
        // the buffers, and the channel counts that.
        if (Faulted) return;
        // A completion for a command not in flight is a backend bug: it would write a stale response into memory
        // the guest may have reused. Throwing faults this queue (the caller reports it) instead.
        if (tag >= (ulong)_slots.Length || _slots[(int)tag].Pending <= 0)
            throw new InvalidOperationException($"backend completed tag {tag}, which is not in flight");
        ref Slot slot = ref _slots[(int)tag];
        if (status != BlockStatus.Ok && slot.Status == ScsiStatus.Good)
        {
            slot.Status = ScsiStatus.CheckCondition;
            slot.Sense = SenseFor(status, slot.Operation);
            slot.Error = IoErrorKinds.From(status);
        }
        if (status != BlockStatus.Ok) slot.PatternRemaining = 0;
        if (slot.Pumping) slot.PieceDone = true;
        else if (slot.PatternRemaining > 0) Pump((ushort)tag, ref slot);
        if (_compareAndWrite.Runs((ushort)tag)) _compareAndWrite.Completed((ushort)tag, status);
        CompleteSlot((ushort)tag, ref slot);
    }

    /// <summary>The sense a failed backend request reports (I/O errors are MEDIUM ERROR).</summary>
    public static SenseCode SenseFor(BlockStatus status, BlockOperation operation) => status switch
    {
        BlockStatus.OutOfRange => SenseCode.LbaOutOfRange,
        BlockStatus.ReadOnly => SenseCode.WriteProtected,
        BlockStatus.NoSpace => SenseCode.SpaceAllocationFailed,
        BlockStatus.Unsupported => SenseCode.InvalidFieldInCdb,
        _ => operation == BlockOperation.Read ? SenseCode.UnrecoveredReadError : SenseCode.WriteError,
    };

    private void CompleteSlot(ushort head, ref Slot slot)
    {
        if (--slot.Pending > 0) return;
        if (slot.WriteBegun) _tracker.End(head);
        if (slot.Lun >= 0) _owners[slot.Lun]!.AddInFlight(_queue, -1);
        bool ok = slot.Response == VirtioScsi.Ok;
        bool good = ok && slot.Status == ScsiStatus.Good;
        ulong written = good ? slot.DataInWritten : 0;

        Span<byte> response = stackalloc byte[VirtioScsi.ResponseHeaderLength + VirtioScsi.MaxSenseSize];
        response.Clear();
        int senseLength = 0;
        if (ok && slot.Status == ScsiStatus.CheckCondition)
            senseLength = slot.Sense.WriteFixed(response.Slice(VirtioScsi.ResponseHeaderLength, Math.Min(slot.SenseSize, slot.RespBytes - VirtioScsi.ResponseHeaderLength)));
        ulong resid = slot.DataInBytes > 0 ? slot.DataInBytes - written : slot.DataOutBytes - (good ? slot.DataOutConsumed : 0);
        BinaryPrimitives.WriteUInt32LittleEndian(response, (uint)senseLength);
        BinaryPrimitives.WriteUInt32LittleEndian(response[4..], (uint)Math.Min(resid, uint.MaxValue));
        response[10] = ok ? slot.Status : (byte)0;
        response[11] = slot.Response;
        WriteResponse(ref slot, response[..slot.RespBytes]);
        // Commands that failed before their LUN was known count as the device's unaddressed ones.
        var counters = slot.Counters;
        if (counters is null)
        {
            counters = _device.UnaddressedCounters[_queue];
            counters.Begin();
        }
        var error = !ok ? IoErrorKind.Invalid : good ? IoErrorKind.None
            : slot.Error != IoErrorKind.None ? slot.Error : ScsiErrorKinds.For(slot.Sense);
        CompleteRequest(head, (uint)Math.Min((ulong)slot.RespBytes + written, uint.MaxValue), counters, slot.Op, slot.Bytes, error);
    }

    /// <summary>Copies the response into its buffers (validated when the chain was walked).</summary>
    private static void WriteResponse(ref Slot slot, ReadOnlySpan<byte> response)
    {
        int at = 0;
        for (int i = slot.RespFirst; i < slot.RespLastIndex && at < response.Length; i++)
        {
            int n = (int)Math.Min((nuint)(response.Length - at), slot.Segments[i].Length);
            response.Slice(at, n).CopyTo(new Span<byte>(slot.Segments[i].Base, n));
            at += n;
        }
        int rest = (int)Math.Min((nuint)(response.Length - at), slot.RespLastLength);
        response.Slice(at, rest).CopyTo(new Span<byte>(slot.RespLastBase, rest));
        // The driver reads the response next: its first line (status, response code) from the shared cache. Only
        // a buffer the response really went into (a zero-length segment's address was never used).
        bool inFirst = slot.RespFirst < slot.RespLastIndex && slot.Segments[slot.RespFirst].Length > 0;
        CacheLines.Demote(inFirst ? slot.Segments[slot.RespFirst].Base : slot.RespLastBase);
    }

    protected override void OnFaultSettled() => ReleaseUnfinished();

    /// <summary>
    /// Commands this queue will never complete (it faulted, or its stop was abandoned) stop counting as in flight
    /// on their LUN, which task management waits for; called only once no backend operation can touch their
    /// buffers any more. Idempotent.
    /// </summary>
    private void ReleaseUnfinished()
    {
        for (int i = 0; i < _slots.Length; i++)
        {
            ref Slot slot = ref _slots[i];
            if (slot.Pending <= 0) continue;
            slot.Pending = 0;
            _tracker.End(i);
            _compareAndWrite.Abandon((ushort)i);
            if (slot.Lun >= 0) _owners[slot.Lun]!.AddInFlight(_queue, -1);
        }
        _deferredCount = 0;
    }

    // ---- LUN hot-plug ----

    /// <summary>This queue's channel to <paramref name="lun"/>, opened now if it has none (the LUN was hot-added
    /// since the queue started; an allocation once per LUN and queue, not per command).</summary>
    private IBlockChannel ChannelFor(ScsiLun lun)
    {
        int slot = lun.Index;
        if (_owners[slot] is { } previous && previous != lun)
            throw new InvalidOperationException($"LUN slot {slot} is reused while this queue still holds its previous LUN");
        var channel = lun.Backend.OpenChannel(_io, this, _channelCapacity);
        // Before this queue's first write to the disk (the gate's proof needs the registration first).
        lun.Shared.Gate.Register(_tracker);
        if (!_gates.Contains(lun.Shared.Gate)) _gates.Add(lun.Shared.Gate);
        _channels[slot] = channel;
        _owners[slot] = lun;
        return channel;
    }

    /// <summary>
    /// Management thread: <paramref name="lun"/> left the table. Once this queue's commands to it have completed
    /// it closes its channel to it and signals <paramref name="done"/> (at once when it never opened one or has
    /// stopped). The queue's reactor is woken to do it.
    /// </summary>
    internal void ReleaseLun(ScsiLun lun, CountdownEvent done)
    {
        lock (_releases)
        {
            if (_disposed)
            {
                done.Signal();
                return;
            }
            _releases.Enqueue((lun, done));
        }
        _io.Wake();
    }

    protected override bool HasDeferredWork => _deferredCount > 0 || _compareAndWrite.Waiting || !_releases.IsEmpty || _releasing.Count > 0;

    protected override int PollDeferred()
    {
        int work = 0;
        if (_compareAndWrite.Waiting) work += _compareAndWrite.Poll();
        if (_deferredCount > 0) work += RetryDeferred();
        return work + PollReleases();
    }

    private int PollReleases()
    {
        if (_releases.IsEmpty && _releasing.Count == 0) return 0;
        while (_releases.TryDequeue(out var release)) _releasing.Add(release);
        int done = 0;
        for (int i = _releasing.Count - 1; i >= 0; i--)
        {
            var (lun, signal) = _releasing[i];
            int slot = lun.Index;
            if (_owners[slot] == lun)
            {
                if (lun.InFlightOn(_queue) > 0 || _channels[slot]!.InFlight > 0) continue;
                _channels[slot]!.Dispose();
                _channels[slot] = null;
                _owners[slot] = null;
            }
            _releasing.RemoveAt(i);
            signal.Signal();
            done++;
        }
        return done;
    }

    public override void Dispose()
    {
        ReleaseUnfinished();
        foreach (var channel in _channels) channel?.Dispose();
        _tracker.EndAll();
        foreach (var gate in _gates) gate.Unregister(_tracker);
        _device.Unregister(this);
        lock (_releases)
        {
            _disposed = true;
            while (_releases.TryDequeue(out var release)) release.Done.Signal();
        }
        foreach (var release in _releasing) release.Done.Signal();
        _releasing.Clear();
        _jobs.Dispose();
        _patterns.Dispose();
        _compareAndWrite.Dispose();
        base.Dispose();
    }
}
