using BlkTarget.Storage.Interop;
using BlkTarget.Storage.Network;
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
internal sealed unsafe class RbdChannel : NetworkChannel<RbdChannel.Call>
{
    /// <summary>Most iovecs one rbd_aio_readv/writev gets (librbd refuses more than IOV_MAX).</summary>
    public const int IovMax = 1024;
    private const int ENOSPC = Errno.ENOSPC, EDQUOT = 122;

    /// <summary>The librbd call of one request's current step.</summary>
    internal struct Call
    {
        /// <summary>Handed to librbd, not yet reaped.</summary>
        public bool Outstanding;
        /// <summary>iovecs and bytes of the piece in flight.</summary>
        public int PieceIovs;
        public ulong PieceBytes;
    }

    private readonly RbdDisk _disk;

    public RbdChannel(RbdDisk disk, IoContext io, IBlockCompletionSink sink, int maxInFlight, ILogger log)
        : base(disk, io, sink, maxInFlight, "librbd", log)
    {
        _disk = disk;
        Id = disk.Register(this);
        io.AddWakeSource(disk.NotifyFd);
    }

    protected override void Start(int index) => Issue(index);

    /// <summary>Hands the operation's current step to librbd; a refusal fails the request.</summary>
    private void Issue(int index)
    {
        ref Operation op = ref Ops[index];
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
        int r = rbd_aio_create_completion(UserData(index), 0, out nint completion);
        if (r < 0)
        {
            Fail(index, r);
            return;
        }
        switch (op.Step)
        {
            case Step.Data:
                op.Backend.PieceIovs = Math.Min(op.IovCount, IovMax);
                op.Backend.PieceBytes = RequestValidation.IovBytes(op.Iov, op.Backend.PieceIovs);
                r = op.Kind == BlockOperation.Read
                    ? rbd_aio_readv(image, op.Iov, op.Backend.PieceIovs, op.Offset, completion)
                    : rbd_aio_writev(image, op.Iov, op.Backend.PieceIovs, op.Offset, completion);
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
        op.Backend.Outstanding = true;
    }

    /// <summary>A completion of this channel reaped on another thread (any thread): queued for this channel's reactor,
    /// which is woken for it.</summary>
    internal void Deliver(int index, long result)
    {
        if (Post(index, result)) Io.Wake();
    }

    protected override void Handle(int index, long result)
    {
        ref Operation op = ref Ops[index];
        op.Backend.Outstanding = false;
        if (result < 0)
        {
            Fail(index, (int)result);
            return;
        }
        switch (op.Step)
        {
            case Step.Data:
                if (op.Kind == BlockOperation.Read && (ulong)result != op.Backend.PieceBytes)
                {
                    LogError(op, $"short read: {result} of {op.Backend.PieceBytes} bytes");
                    Finish(index, BlockStatus.IoError);
                    return;
                }
                op.Iov += op.Backend.PieceIovs;
                op.IovCount -= op.Backend.PieceIovs;
                op.Offset += op.Backend.PieceBytes;
                if (op.IovCount > 0)
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

    /// <summary>Reaps the image's completions: this channel's are handled at once, other channels' go to their inbox.</summary>
    protected override int PollLibrary() => _disk.PollCompletions(this);

    protected override bool IsOutstanding(ref Operation op) => op.Backend.Outstanding;

    /// <summary>A pool over its quota is full too.</summary>
    protected override bool IsNoSpace(int errno) => errno is ENOSPC or EDQUOT;

    protected override void LogFailure(in Operation op, string error, long count) =>
        Log.LogError("rbd {Image}: {Operation} at offset {Offset} ({Length} bytes) failed: {Error} (error #{Count})",
            _disk.Options.Name, op.Kind, op.Offset, op.Length, error, count);

    /// <summary>After the last request was reaped: leaves the disk's routing table and the reactor's sleep set.</summary>
    protected override void OnClosed()
    {
        Io.RemoveWakeSource(_disk.NotifyFd);
        _disk.Unregister(Id);
    }
}
