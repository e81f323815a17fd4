using BlkTarget.Storage.Interop;
using BlkTarget.Storage.Transfer;
using Microsoft.Extensions.Logging;
using static BlkTarget.Storage.Interop.RbdNative;

namespace BlkTarget.Storage.Rbd;

/// <summary>
/// One reactor's path into an <see cref="RbdDisk"/>. Reads and writes go to librbd as rbd_aio_readv/writev with the
/// request's iovecs (guest memory, no copy; at most <see cref="IovMax"/> per call, longer requests in pieces), FLUSH as
/// rbd_aio_flush, DISCARD as rbd_aio_discard (advisory), WRITE_ZEROES as rbd_aio_write_zeroes. Every librbd call gets
/// a completion without callback whose argument names this channel and the request's slot; completions are reaped on
/// a reactor with rbd_poll_io_events (<see cref="RbdDisk.PollCompletions"/>): this channel's own directly, another
/// channel's through that channel's <see cref="CompletionInbox"/>. A negative result fails the request with IOERR
/// (NoSpace for ENOSPC/EDQUOT); the channel keeps serving. Slots are allocated once; nothing is allocated per request.
/// </summary>
internal sealed unsafe class RbdChannel : IBlockChannel, IIoCompletionTarget
{
    /// <summary>Most iovecs one rbd_aio_readv/writev gets (librbd refuses more than IOV_MAX).</summary>
    public const int IovMax = 1024;
    private const int ENOSPC = Errno.ENOSPC, EDQUOT = 122;

    private enum Step : byte { None, Data, Flush, Discard, WriteZeroes, FlushAfterWrite }

    private struct Operation
    {
        public ulong Tag;
        public BlockOperation Kind;
        public BlockRequestFlags Flags;
        public Step Step;
        /// <summary>Handed to librbd, not yet reaped.</summary>
        public bool Outstanding;
        public ulong Offset;
        public ulong Length;
        public IoVec* Iov;
        public int IovLeft;
        /// <summary>iovecs and bytes of the piece in flight.</summary>
        public int PieceIovs;
        public ulong PieceBytes;
    }

    private readonly RbdDisk _disk;
    private readonly IoContext _io;
    private readonly IBlockCompletionSink _sink;
    private readonly ILogger _log;
    private readonly Operation[] _ops;
    private readonly SlotStack _slots;
    private readonly CompletionInbox _inbox;
    private readonly int _target;
    private long _errors;
    private bool _faulted;
    private bool _disposed;
    private bool _released;

    public RbdChannel(RbdDisk disk, IoContext io, IBlockCompletionSink sink, int maxInFlight, ILogger log)
    {
        _disk = disk;
        _io = io;
        _sink = sink;
        _log = log;
        _ops = new Operation[maxInFlight];
        _slots = new SlotStack(maxInFlight);
        _inbox = new CompletionInbox(maxInFlight);
        _target = io.AddTarget(this);
        Id = disk.Register(this);
        io.AddWakeSource(disk.NotifyFd);
        io.RequestPolling(this);
    }

    /// <summary>This channel's index in its disk's routing table (the high half of every completion argument).</summary>
    public int Id { get; }

    public int InFlight => _slots.InUse;

    public void Submit(in BlockRequest request)
    {
        var status = RequestValidation.Check(request, _disk.Info);
        if (status != BlockStatus.Ok || _faulted || _disposed || !_slots.TryTake(out int index))
        {
            _sink.Complete(request.Tag, status != BlockStatus.Ok ? status : BlockStatus.IoError);
            return;
        }
        ref Operation op = ref _ops[index];
        op = new Operation
        {
            Tag = request.Tag, Kind = request.Operation, Flags = request.Flags, Offset = request.Offset, Length = request.Length,
            Iov = request.Iov, IovLeft = request.IovCount,
        };
        switch (request.Operation)
        {
            case BlockOperation.Read:
            case BlockOperation.Write:
                if (RequestValidation.IovBytes(request.Iov, request.IovCount) != request.Length)
                {
                    Finish(index, BlockStatus.IoError);
                    return;
                }
                if (request.Length == 0)
                {
                    Finish(index, BlockStatus.Ok);
                    return;
                }
                op.Step = Step.Data;
                break;
            case BlockOperation.Flush:
                op.Step = Step.Flush;
                break;
            case BlockOperation.Discard:
                op.Step = Step.Discard;
                break;
            default:
                op.Step = Step.WriteZeroes;
                break;
        }
        if (op.Step is Step.Discard or Step.WriteZeroes && op.Length == 0)
        {
            Finish(index, BlockStatus.Ok);
            return;
        }
        Issue(index);
    }

    /// <summary>Hands the operation's current step to librbd; a refusal fails the request.</summary>
    private void Issue(int index)
    {
        ref Operation op = ref _ops[index];
        nint image = _disk.EnterImage();
        if (image == 0)
        {
            Fail(index, -Errno.ENXIO);     // the disk was closed under its channel
            return;
        }
        try
        {
            IssueOn(image, index, ref op);
        }
        finally
        {
            _disk.ExitImage();
        }
    }

    private void IssueOn(nint image, int index, ref Operation op)
    {
        int r = rbd_aio_create_completion((nint)(((ulong)(uint)Id << 32) | (uint)index), 0, out nint completion);
        if (r < 0)
        {
            Fail(index, r);
            return;
        }
        switch (op.Step)
        {
            case Step.Data:
                op.PieceIovs = Math.Min(op.IovLeft, IovMax);
                op.PieceBytes = RequestValidation.IovBytes(op.Iov, op.PieceIovs);
                r = op.Kind == BlockOperation.Read
                    ? rbd_aio_readv(image, op.Iov, op.PieceIovs, op.Offset, completion)
                    : rbd_aio_writev(image, op.Iov, op.PieceIovs, op.Offset, completion);
                break;
            case Step.Flush:
            case Step.FlushAfterWrite:
                r = rbd_aio_flush(image, completion);
                break;
            case Step.Discard:
                r = rbd_aio_discard(image, op.Offset, op.Length, completion);
                break;
            case Step.WriteZeroes:
                r = rbd_aio_write_zeroes(image, op.Offset, (nuint)op.Length, completion, 0, 0);
                break;
        }
        if (r < 0)
        {
            rbd_aio_release(completion);    // librbd did not take it
            Fail(index, r);
            return;
        }
        op.Outstanding = true;
    }

    /// <summary>A completion of this channel reaped on its own reactor.</summary>
    internal void Completed(int index, long result)
    {
        try
        {
            Handle(index, result);
        }
        catch (Exception e)
        {
            OnFault(e);
        }
    }

    /// <summary>A completion of this channel reaped on another thread (any thread): queued for this channel's reactor,
    /// which is woken for it.</summary>
    internal void Deliver(int index, long result)
    {
        if (_inbox.Post(index, result)) _io.Wake();
    }

    private void Handle(int index, long result)
    {
        ref Operation op = ref _ops[index];
        op.Outstanding = false;
        if (_faulted || _disposed)
        {
            Release(index);
            return;
        }
        if (result < 0)
        {
            Fail(index, (int)result);
            return;
        }
        switch (op.Step)
        {
            case Step.Data:
                if (op.Kind == BlockOperation.Read && (ulong)result != op.PieceBytes)
                {
                    LogError(op, $"short read: {result} of {op.PieceBytes} bytes");
                    Finish(index, BlockStatus.IoError);
                    return;
                }
                op.Iov += op.PieceIovs;
                op.IovLeft -= op.PieceIovs;
                op.Offset += op.PieceBytes;
                if (op.IovLeft > 0)
                {
                    Issue(index);
                    return;
                }
                if (op.Kind == BlockOperation.Write && (op.Flags & BlockRequestFlags.Fua) != 0 && _disk.Options.Writeback)
                {
                    op.Step = Step.FlushAfterWrite;      // FUA through librbd's cache: the write is durable after a flush
                    Issue(index);
                    return;
                }
                Finish(index, BlockStatus.Ok);
                return;
            case Step.WriteZeroes when (op.Flags & BlockRequestFlags.Fua) != 0 && _disk.Options.Writeback:
                op.Step = Step.FlushAfterWrite;
                Issue(index);
                return;
            default:
                Finish(index, BlockStatus.Ok);
                return;
        }
    }

    /// <summary>Reaps the image's completions (this channel's directly) and what other reactors reaped for this one.</summary>
    public int OnPoll()
    {
        int work = _disk.PollCompletions(this);
        for (int slot = _inbox.TakeAll(); slot >= 0;)
        {
            int next = _inbox.Next(slot);
            Completed(slot, _inbox.Result(slot));
            slot = next;
            work++;
        }
        return work;
    }

    public void OnIoCompleted(ulong tag, int result) =>
        throw new InvalidOperationException("an rbd channel submits nothing to the io_uring");

    public void OnSqeAvailable(ulong tag) =>
        throw new InvalidOperationException("an rbd channel waits for no submission entry");

    private void Fail(int index, int result)
    {
        int errno = -result;
        LogError(_ops[index], Errno.Describe("librbd", errno));
        Finish(index, errno is ENOSPC or EDQUOT ? BlockStatus.NoSpace : BlockStatus.IoError);
    }

    private void Finish(int index, BlockStatus status)
    {
        ulong tag = _ops[index].Tag;
        Release(index);
        if (!_faulted) _sink.Complete(tag, status);
    }

    private void Release(int index)
    {
        _ops[index] = default;
        _slots.Return(index);
        if (_disposed && _slots.InUse == 0) ReleaseResources();
    }

    private void LogError(in Operation op, string error)
    {
        long count = ++_errors;
        // The first errors and then every thousandth: a cluster that is down cannot flood the log.
        if (count <= 10 || count % 1000 == 0)
            _log.LogError("rbd {Image}: {Operation} at offset {Offset} ({Length} bytes) failed: {Error} (error #{Count})",
                _disk.Options.Name, op.Kind, op.Offset, op.Length, error, count);
    }

    public void Cancel()
    {
        if (_faulted) return;
        _faulted = true;
        ReleaseIdleSlots();
    }

    public void OnFault(Exception error)
    {
        if (_faulted) return;
        Cancel();
        _sink.ChannelFaulted(error);
    }

    private void ReleaseIdleSlots()
    {
        for (int i = 0; i < _ops.Length; i++)
            if (_ops[i].Step != Step.None && !_ops[i].Outstanding) Release(i);
    }

    /// <summary>Closes the channel. Requests librbd still holds keep their slots (and the guest buffers they point at)
    /// until they are reaped; the channel leaves its disk's routing table and its reactor after the last one.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        ReleaseIdleSlots();
        if (_slots.InUse == 0) ReleaseResources();
    }

    private void ReleaseResources()
    {
        if (_released) return;
        _released = true;
        _io.StopPolling(this);
        _io.RemoveWakeSource(_disk.NotifyFd);
        _io.RemoveTarget(_target);
        _disk.Unregister(Id);
    }
}
