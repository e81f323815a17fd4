using BlkTarget.Storage.Transfer;

namespace BlkTarget.Storage.Image;

/// <summary>
/// One reactor's path into an <see cref="ImageDisk"/>. A read or write holds its cluster range
/// (<see cref="ClusterRangeLocks"/>) from submission to completion and is walked cluster run by cluster run: a run
/// of physically contiguous allocated clusters is one READV/WRITEV on the reactor's io_uring with the guest's own
/// iovecs (zero-copy), a run of unallocated clusters reads as zeros without I/O, and a write to unallocated
/// clusters first has the image's metadata worker allocate them (the reactor never blocks on that). FLUSH is a
/// full fsync on the ring; DISCARD and WRITE_ZEROES go to the metadata worker, which waits until no request on
/// those clusters is in flight. A write-through (FUA) write completes only once the metadata it depends on is
/// durable too.
/// </summary>
internal sealed class ImageChannel : IoUringChannel
{
    private readonly ImageDisk _disk;
    private readonly ImageFile _image;
    private readonly ClusterRangeLocks _ranges;
    private readonly int _shift;
    private readonly ulong _clusterMask;
    /// <summary>Requests waiting for a deallocation to release their range; retried on every poll.</summary>
    private readonly int[] _parked;
    private readonly int[] _retrying;
    private int _parkedCount;
    private int _hasParked;

    public ImageChannel(ImageDisk disk, IoContext io, IBlockCompletionSink sink, int maxInFlight)
        : base(io, sink, maxInFlight, disk.Image.Fd, disk, disk.MemoryAlignment, disk.Log, disk.Image.Path)
    {
        _disk = disk;
        _image = disk.Image;
        _ranges = disk.Ranges;
        _shift = _image.Header.ClusterShift;
        _clusterMask = _image.ClusterSize - 1;
        _parked = new int[maxInFlight];
        _retrying = new int[maxInFlight];
        disk.Register(this);
    }

    /// <summary>Whether requests wait for a range (read by the metadata worker to decide whom to wake).</summary>
    internal bool HasParked => Volatile.Read(ref _hasParked) != 0;

    internal IoContext Context => Io;

    protected override IMediumRecorder? Recorder => _image.Recorder;

    protected override bool FlushIsDataOnly => false;   // punched holes and the file size must be durable too

    protected override bool ReadsZerosPastEndOfFile => true;   // a cluster mapped past a size a crash lost

    protected override void StartTransfer(int index)
    {
        ref IoOperation op = ref Ops[index];
        op.RangeFirst = op.Cursor.Offset >> _shift;
        op.RangeLast = (op.Cursor.Offset + op.Cursor.Remaining - 1) >> _shift;
        if (!_ranges.TryEnter(op.RangeFirst, op.RangeLast, out op.RangeEpoch))
        {
            Park(index);
            return;
        }
        op.HoldsRange = true;
        Continue(index);
    }

    protected override Piece MapPiece(int index, ref IoOperation op, out ulong fileOffset, out ulong length)
    {
        ref TransferCursor c = ref op.Cursor;
        ulong virtualCluster = c.Offset >> _shift;
        ulong physical = _image.Entry(virtualCluster);
        fileOffset = 0;
        length = 0;
        if (physical == 0 && op.Kind == BlockOperation.Write)
        {
            // Allocate every unallocated cluster this write still covers in one go, so they come out contiguous.
            ulong clusters = ((c.Offset + c.Remaining - 1) >> _shift) - virtualCluster + 1;
            BeginHelper(index);
            _disk.Worker.Enqueue(new MetadataJob(MetadataJobKind.Allocate, Io, Target, (ulong)index, virtualCluster, clusters, Durable: false));
            return Piece.Deferred;
        }
        length = _image.MappedRunLength(c.Offset, c.Remaining, physical);
        if (physical == 0) return Piece.Zeros;
        fileOffset = (physical << _shift) + (c.Offset & _clusterMask);
        return Piece.Data;
    }

    protected override void TransferDone(int index)
    {
        ref IoOperation op = ref Ops[index];
        long version = _image.MetadataVersion;
        if (op.Kind == BlockOperation.Write && (op.Flags & BlockRequestFlags.Fua) != 0 && _image.DurableVersion < version)
        {
            // The data is durable (RWF_DSYNC), but the map entries naming its clusters (this write's allocation or
            // a concurrent one) may not be: without them the data is lost in a power failure.
            op.Version = version;
            op.Step = IoStep.WriteThroughSync;
            Issue(index);
            return;
        }
        Finish(index, BlockStatus.Ok);
    }

    protected override void WriteThroughSynced(int index)
    {
        _image.MarkDurable(Ops[index].Version);
        Finish(index, BlockStatus.Ok);
    }

    protected override void StartFlush(int index)
    {
        // Everything the metadata worker finished before this point is covered by the fsync; what it frees
        // becomes reusable when this fsync completes, whatever order flushes from other queues complete in.
        Ops[index].Version = _image.MetadataVersion;
        base.StartFlush(index);
    }

    protected override void FlushCompleted(int index)
    {
        _image.MarkDurable(Ops[index].Version);
        Finish(index, BlockStatus.Ok);
    }

    protected override void StartDeallocation(int index)
    {
        ref IoOperation op = ref Ops[index];
        if (op.Cursor.Remaining == 0)
        {
            Finish(index, BlockStatus.Ok);
            return;
        }
        BeginHelper(index);
        _disk.Worker.Enqueue(new MetadataJob(MetadataJobKind.Deallocate, Io, Target, (ulong)index, op.Cursor.Offset, op.Cursor.Remaining,
            Durable: (op.Flags & BlockRequestFlags.Fua) != 0));
    }

    protected override void HelperCompleted(int index, int result)
    {
        if (result < 0) Fail(index, -result);
        else if (Ops[index].Kind == BlockOperation.Write) Continue(index);   // its clusters are allocated now
        else Finish(index, BlockStatus.Ok);
    }

    protected override void OnReleasing(int index, ref IoOperation op)
    {
        if (!op.HoldsRange) return;
        _ranges.Exit(op.RangeFirst, op.RangeLast, op.RangeEpoch);
        op.HoldsRange = false;
        // A deallocation may be waiting for exactly this request.
        if (_ranges.DeallocationInProgress) _disk.Worker.Wake();
    }

    private void Park(int index)
    {
        Ops[index].Step = IoStep.Parked;
        _parked[_parkedCount++] = index;
        Volatile.Write(ref _hasParked, 1);
        Io.RequestPolling(this);
    }

    /// <summary>Retries parked requests: those whose range is free now go on, the others wait again.</summary>
    public override int OnPoll()
    {
        if (_parkedCount == 0)
        {
            Io.StopPolling(this);
            return 0;
        }
        int count = _parkedCount;
        Array.Copy(_parked, _retrying, count);
        _parkedCount = 0;
        // Cleared before the attempts: a release that happens during them finds the flag set again by a re-park.
        Volatile.Write(ref _hasParked, 0);
        int started = 0;
        for (int i = 0; i < count; i++)
        {
            int index = _retrying[i];
            ref IoOperation op = ref Ops[index];
            if (!op.InUse || op.Step != IoStep.Parked) continue;   // released by a fault or shutdown meanwhile
            // Look before counting: a retry that counts itself in and out on every poll would keep the bucket the
            // deallocation waits for busy.
            if (_ranges.Overlaps(op.RangeFirst, op.RangeLast) || !_ranges.TryEnter(op.RangeFirst, op.RangeLast, out op.RangeEpoch))
            {
                Park(index);
                continue;
            }
            op.HoldsRange = true;
            op.Step = IoStep.None;
            started++;
            Continue(index);
        }
        // A deallocation may have ended between our look and the flag Park set: the worker then may not have seen
        // the flag. The flag is written before this fence and the worker clears its range before reading the flag,
        // so one of us sees the other: if a range is free now, report work, and the reactor polls again at once
        // instead of sleeping.
        if (_parkedCount > 0)
        {
            Interlocked.MemoryBarrier();
            for (int i = 0; i < _parkedCount; i++)
            {
                ref IoOperation op = ref Ops[_parked[i]];
                if (!_ranges.Overlaps(op.RangeFirst, op.RangeLast)) return started + 1;
            }
        }
        return started;
    }

    protected override void OnClosed()
    {
        Io.StopPolling(this);
        _disk.Unregister(this);
    }
}
