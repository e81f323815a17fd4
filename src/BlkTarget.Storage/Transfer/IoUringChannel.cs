using System.Runtime.InteropServices;
using BlkTarget.Storage.Interop;
using Microsoft.Extensions.Logging;
using static BlkTarget.Storage.Interop.FileNative;

namespace BlkTarget.Storage.Transfer;

/// <summary>
/// What every channel whose I/O goes through the reactor's io_uring shares (raw files and images): request slots
/// allocated once, validation, bounce buffers for buffers O_DIRECT cannot use, reads and writes walked piece by
/// piece (a subclass maps each piece to the file: <see cref="MapPiece"/>) with short transfers resumed, EINTR/EAGAIN
/// retried and errors logged at a bounded rate, waiting for a submission entry rather than failing, and (with
/// <see cref="SlotChannel"/>) the fault and shutdown paths: a faulted or disposed channel completes nothing more, but
/// keeps each slot (and the guest buffers and bounce memory it points at) until the kernel or helper thread has
/// returned it, and leaves its I/O context only when nothing of it is outstanding.
/// </summary>
internal abstract unsafe class IoUringChannel : SlotChannel, IIoCompletionTarget
{
    protected enum Piece : byte
    {
        /// <summary>The next piece is file I/O at the given offset and length.</summary>
        Data,
        /// <summary>The next piece reads as zeros without I/O.</summary>
        Zeros,
        /// <summary>The subclass has parked the operation or handed it to a helper; it calls <see cref="Continue"/> later.</summary>
        Deferred,
    }

    protected const int EINTR = Errno.EINTR, EAGAIN = Errno.EAGAIN;

    private readonly BouncePool _bounce;
    private readonly IBlockDevice _device;
    private readonly uint _memoryAlignment;
    private readonly int _fd;
    private readonly int _fileSlot;
    private readonly string _name;

    protected IoUringChannel(IoContext io, IBlockCompletionSink sink, int maxInFlight, int fd, IBlockDevice device,
        uint memoryAlignment, ILogger log, string name)
        : base(sink, maxInFlight)
    {
        Io = io;
        Log = log;
        _device = device;
        _memoryAlignment = memoryAlignment;
        _fd = fd;
        _name = name;
        // Pinned: an operation's bounce iovec is handed to the kernel by address.
        Ops = GC.AllocateArray<IoOperation>(maxInFlight, pinned: true);
        _bounce = new BouncePool(Math.Max(memoryAlignment, 4096));
        Target = io.AddTarget(this);
        _fileSlot = io.RegisterFile(fd);
    }

    /// <summary>Test seam (power-loss simulation); null in production.</summary>
    protected virtual IMediumRecorder? Recorder => null;

    protected IoContext Io { get; }
    protected ILogger Log { get; }
    protected IoOperation[] Ops { get; }
    /// <summary>This channel's index in its I/O context (part of every user_data it submits).</summary>
    protected int Target { get; }

    /// <summary>FLUSH as fdatasync (true) or a full fsync (false: metadata such as punched holes must be durable too).</summary>
    protected abstract bool FlushIsDataOnly { get; }

    /// <summary>A read that hits the end of the file gets zeros (image clusters mapped past a size a crash lost)
    /// instead of an error.</summary>
    protected virtual bool ReadsZerosPastEndOfFile => false;

    public override void Submit(in BlockRequest request)
    {
        if (!TryAdmit(request, _device.Info, out int index)) return;
        ref IoOperation op = ref Ops[index];
        op = new IoOperation { Tag = request.Tag, InUse = true, Kind = request.Operation, Flags = request.Flags, Cursor = new TransferCursor(request) };
        switch (request.Operation)
        {
            case BlockOperation.Read:
            case BlockOperation.Write:
                if (request.Length == 0)
                {
                    Finish(index, BlockStatus.Ok);
                    return;
                }
                if (RequestValidation.IovBytes(request.Iov, request.IovCount) != request.Length)
                {
                    Finish(index, BlockStatus.IoError);
                    return;
                }
                if (!op.Cursor.IsAligned(_memoryAlignment)) op.Bounce.Begin(ref op.Cursor, request.Operation == BlockOperation.Write, _bounce);
                StartTransfer(index);
                break;
            case BlockOperation.Flush:
                StartFlush(index);
                break;
            default:
                StartDeallocation(index);
                break;
        }
    }

    /// <summary>Begins a read or write (after validation and bouncing).</summary>
    protected virtual void StartTransfer(int index) => Continue(index);

    /// <summary>Begins a FLUSH: an fsync through the ring.</summary>
    protected virtual void StartFlush(int index)
    {
        Ops[index].Step = IoStep.Flush;
        Issue(index);
    }

    /// <summary>Begins a DISCARD or WRITE_ZEROES.</summary>
    protected abstract void StartDeallocation(int index);

    /// <summary>Where the next piece of a read or write (at <c>op.Cursor.Offset</c>, at most <c>op.Cursor.Remaining</c>
    /// bytes) lies in the file, or that it is zeros, or that the subclass deferred the operation.</summary>
    protected abstract Piece MapPiece(int index, ref IoOperation op, out ulong fileOffset, out ulong length);

    /// <summary>Issues the next piece of a read or write, or finishes it when nothing is left.</summary>
    protected void Continue(int index)
    {
        ref IoOperation op = ref Ops[index];
        while (op.Cursor.Remaining > 0)
        {
            var piece = MapPiece(index, ref op, out ulong fileOffset, out ulong length);
            if (piece == Piece.Deferred) return;
            if (piece == Piece.Zeros)
            {
                op.Cursor.ZeroFront(length);
                op.Cursor.Advance(length);
                continue;
            }
            op.PieceFileOffset = fileOffset;
            TrimView(ref op, length);
            op.Step = IoStep.Data;
            Issue(index);
            return;
        }
        if (op.Kind == BlockOperation.Read && op.Bounce.Active) op.Bounce.CopyToGuest();
        TransferDone(index);
    }

    /// <summary>Every byte of a read or write moved; a subclass may still have work (write-through metadata).</summary>
    protected virtual void TransferDone(int index) => Finish(index, BlockStatus.Ok);

    /// <summary>Submits the SQE for the operation's current <see cref="IoOperation.Step"/>, or waits for a free one.</summary>
    protected void Issue(int index)
    {
        ref IoOperation op = ref Ops[index];
        op.Outstanding = true;
        var sqe = Io.TryNextSqe(Target);
        if (sqe == null)
        {
            Io.WaitForSqe(Target, (ulong)index);
            return;
        }
        bool fixedFile = _fileSlot >= 0;
        int fd = fixedFile ? _fileSlot : _fd;
        ulong userData = IoContext.UserData(Target, (ulong)index);
        switch (op.Step)
        {
            case IoStep.Data when op.Kind == BlockOperation.Read:
                IoUring.IoUring.PrepareReadv(sqe, fd, op.Cursor.Iov, op.PieceIovCount, op.PieceFileOffset, userData, fixedFile);
                break;
            case IoStep.Data:
                IoUring.IoUring.PrepareWritev(sqe, fd, op.Cursor.Iov, op.PieceIovCount, op.PieceFileOffset, userData, fixedFile,
                    (op.Flags & BlockRequestFlags.Fua) != 0 ? RWF_DSYNC : 0);
                break;
            case IoStep.Flush:
                op.SyncToken = Recorder?.SyncStarted() ?? 0;
                IoUring.IoUring.PrepareFsync(sqe, fd, FlushIsDataOnly, userData, fixedFile);
                break;
            case IoStep.WriteThroughSync:
                op.SyncToken = Recorder?.SyncStarted() ?? 0;
                IoUring.IoUring.PrepareFsync(sqe, fd, dataOnly: false, userData, fixedFile);
                break;
            case IoStep.Fallocate:
                IoUring.IoUring.PrepareFallocate(sqe, fd, op.FallocateMode, op.PieceFileOffset, op.PieceLength, userData, fixedFile);
                break;
            case IoStep.BlockDiscard:
                IoUring.IoUring.PrepareBlockDiscard(sqe, fd, op.PieceFileOffset, op.PieceLength, userData, fixedFile);
                break;
            default:
                throw new InvalidOperationException($"operation in slot {index} has nothing to submit (step {op.Step})");
        }
    }

    /// <summary>Hands the operation to a helper thread; its result comes back through <see cref="HelperCompleted"/>.</summary>
    protected void BeginHelper(int index)
    {
        ref IoOperation op = ref Ops[index];
        op.Step = IoStep.Helper;
        op.Outstanding = true;
        Io.BeginPosted(Target);
    }

    public void OnSqeAvailable(ulong tag)
    {
        int index = (int)tag;
        if (Faulted || Disposed)
        {
            Release(index);
            return;
        }
        Issue(index);
    }

    public void OnIoCompleted(ulong tag, int result)
    {
        int index = (int)tag;
        ref IoOperation op = ref Ops[index];
        op.Outstanding = false;
        if (Faulted || Disposed)
        {
            Release(index);
            return;
        }
        switch (op.Step)
        {
            case IoStep.Data:
                DataCompleted(index, result);
                break;
            case IoStep.Flush:
                if (result < 0) Fail(index, -result);
                else
                {
                    Recorder?.SyncCompleted(op.SyncToken);
                    FlushCompleted(index);
                }
                break;
            case IoStep.WriteThroughSync:
                if (result < 0) Fail(index, -result);
                else
                {
                    Recorder?.SyncCompleted(op.SyncToken);
                    WriteThroughSynced(index);
                }
                break;
            case IoStep.Fallocate:
                FallocateCompleted(index, result);
                break;
            case IoStep.BlockDiscard:
                BlockDiscardCompleted(index, result);
                break;
            case IoStep.Helper:
                HelperCompleted(index, result);
                break;
            default:
                throw new InvalidOperationException($"completion for slot {index}, which waits for nothing (step {op.Step})");
        }
    }

    private void DataCompleted(int index, int result)
    {
        ref IoOperation op = ref Ops[index];
        if (result > 0 && op.Kind == BlockOperation.Write)
            Recorder?.Wrote(op.PieceFileOffset, op.Cursor.Iov, op.PieceIovCount, (ulong)result, (op.Flags & BlockRequestFlags.Fua) != 0);
        RestoreView(ref op);
        if (result < 0)
        {
            int errno = -result;
            if (errno is EINTR or EAGAIN) Continue(index);
            else Fail(index, errno);
            return;
        }
        ulong done = (ulong)result;
        if (done == 0)
        {
            if (op.Kind != BlockOperation.Read || !ReadsZerosPastEndOfFile)
            {
                LogError(op, op.Kind == BlockOperation.Read ? "unexpected end of file" : "write made no progress");
                Finish(index, BlockStatus.IoError);
                return;
            }
            op.Cursor.ZeroFront(op.PieceLength);
            done = op.PieceLength;
        }
        op.Cursor.Advance(Math.Min(done, op.PieceLength));   // a short transfer resumes with the rest
        Continue(index);
    }

    protected virtual void FlushCompleted(int index) => Finish(index, BlockStatus.Ok);

    protected virtual void WriteThroughSynced(int index) => Finish(index, BlockStatus.Ok);

    protected virtual void FallocateCompleted(int index, int result)
    {
        if (result < 0)
        {
            Fail(index, -result);
            return;
        }
        if ((Ops[index].Flags & BlockRequestFlags.Fua) != 0)
        {
            // Write-through zeroing (the guest's write cache is off): the new extents must be durable first.
            Ops[index].Step = IoStep.WriteThroughSync;
            Issue(index);
            return;
        }
        Finish(index, BlockStatus.Ok);
    }

    protected virtual void BlockDiscardCompleted(int index, int result) =>
        throw new InvalidOperationException($"{GetType().Name} issues no block-device discards");

    protected virtual void HelperCompleted(int index, int result) =>
        throw new InvalidOperationException($"{GetType().Name} hands no work to helpers");

    public virtual int OnPoll() => 0;

    /// <summary>Completes the operation with IOERR (NoSpace for ENOSPC) and logs the error.</summary>
    protected void Fail(int index, int errno)
    {
        LogError(Ops[index], Marshal.GetPInvokeErrorMessage(errno));
        Finish(index, errno == ENOSPC ? BlockStatus.NoSpace : BlockStatus.IoError);
    }

    protected sealed override ulong ClearSlot(int index)
    {
        ref IoOperation op = ref Ops[index];
        ulong tag = op.Tag;
        OnReleasing(index, ref op);
        op.Bounce.Release(_bounce);
        op = default;
        return tag;
    }

    /// <summary>Lets a subclass give back what the operation holds (a cluster range) whenever its slot is freed.</summary>
    protected virtual void OnReleasing(int index, ref IoOperation op) { }

    protected sealed override bool IsIdle(int index) => Ops[index].InUse && !Ops[index].Outstanding;

    /// <summary>Most iovecs one readv/writev takes (UIO_MAXIOV); longer requests go in several pieces.</summary>
    public const int IovMax = 1024;

    /// <summary>Limits the iovec array to the first <paramref name="length"/> bytes for one piece, and to
    /// <see cref="IovMax"/> iovecs (the piece then ends earlier; the rest follows as the next piece).</summary>
    private static void TrimView(ref IoOperation op, ulong length)
    {
        IoVec* iov = op.Cursor.Iov;
        ulong covered = 0;
        int i = 0;
        while (covered + iov[i].Length < length && i < IovMax - 1) covered += iov[i++].Length;
        length = Math.Min(length, covered + iov[i].Length);
        op.PieceLength = length;
        op.TrimmedIndex = i;
        op.TrimmedLength = iov[i].Length;
        iov[i].Length = (nuint)(length - covered);
        op.PieceIovCount = i + 1;
    }

    private static void RestoreView(ref IoOperation op)
    {
        if (op.PieceIovCount == 0) return;
        op.Cursor.Iov[op.TrimmedIndex].Length = op.TrimmedLength;
        op.PieceIovCount = 0;
    }

    protected void LogError(in IoOperation op, string error)
    {
        if (CountError(out long count))
            Log.LogError("{Path}: {Operation} at offset {Offset} ({Length} bytes) failed: {Error} (error #{Count})",
                _name, op.Kind, op.Cursor.Offset, op.Cursor.Remaining, error, count);
    }

    protected sealed override void ReleaseResources()
    {
        OnClosed();
        Io.UnregisterFile(_fileSlot);
        Io.RemoveTarget(Target);
        _bounce.Dispose();
    }

    /// <summary>Called once when the channel is gone for good (after the last outstanding operation).</summary>
    protected virtual void OnClosed() { }
}
