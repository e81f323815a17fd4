using System.Runtime.InteropServices;
using BlkTarget.Storage.Transfer;
using Microsoft.Extensions.Logging;
using static BlkTarget.Storage.Interop.FileNative;

namespace BlkTarget.Storage.RawFile;

/// <summary>
/// One reactor's path into a <see cref="FileDisk"/>: requests become io_uring operations on the reactor's
/// ring (READV/WRITEV into guest memory, FSYNC, FALLOCATE), tracked in preallocated operation slots.
/// Short transfers are resumed, I/O errors complete the request with an error status and are logged.
/// </summary>
internal sealed unsafe class FileChannel : IBlockChannel, IIoCompletionTarget
{
    private struct Operation
    {
        public ulong Tag;
        public BlockOperation Kind;
        public BlockRequestFlags Flags;
        public int FallocateMode;
        public TransferCursor Cursor;
        public BounceBuffer Bounce;
    }

    private readonly FileDisk _disk;
    private readonly IoContext _io;
    private readonly IBlockCompletionSink _sink;
    private readonly Operation[] _ops;
    private readonly SlotStack _slots;
    private readonly BouncePool _bounce;
    private readonly int _target;
    private readonly int _fileSlot;
    private long _errors;

    public FileChannel(FileDisk disk, IoContext io, IBlockCompletionSink sink, int maxInFlight)
    {
        _disk = disk;
        _io = io;
        _sink = sink;
        // Pinned: an operation's bounce iovec is handed to the kernel by address.
        _ops = GC.AllocateArray<Operation>(maxInFlight, pinned: true);
        _slots = new SlotStack(maxInFlight);
        _bounce = new BouncePool(Math.Max(disk.MemoryAlignment, 4096));
        _target = io.AddTarget(this);
        _fileSlot = io.RegisterFile(disk.Fd);
    }

    public int InFlight => _slots.InUse;

    public void Submit(in BlockRequest request)
    {
        var status = RequestValidation.Check(request, _disk.Info);
        if (status != BlockStatus.Ok || !_slots.TryTake(out int index))
        {
            _sink.Complete(request.Tag, status != BlockStatus.Ok ? status : BlockStatus.IoError);
            return;
        }
        ref Operation op = ref _ops[index];
        op = new Operation { Tag = request.Tag, Kind = request.Operation, Flags = request.Flags, Cursor = new TransferCursor(request) };
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
                if (!op.Cursor.IsAligned(_disk.MemoryAlignment)) op.Bounce.Begin(ref op.Cursor, request.Operation == BlockOperation.Write, _bounce);
                break;
            case BlockOperation.Discard:
                op.FallocateMode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
                break;
            case BlockOperation.WriteZeroes:
                op.FallocateMode = (request.Flags & BlockRequestFlags.Unmap) != 0
                    ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
                    : FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
                break;
        }
        Issue(index);
    }

    private void Issue(int index)
    {
        ref Operation op = ref _ops[index];
        var sqe = _io.NextSqe();
        if (sqe == null)
        {
            Finish(index, BlockStatus.IoError);
            return;
        }
        bool fixedFile = _fileSlot >= 0;
        int fd = fixedFile ? _fileSlot : _disk.Fd;
        ulong userData = IoContext.UserData(_target, (ulong)index);
        ref TransferCursor c = ref op.Cursor;
        switch (op.Kind)
        {
            case BlockOperation.Read:
                IoUring.IoUring.PrepareReadv(sqe, fd, c.Iov, c.IovCount, c.Offset, userData, fixedFile);
                break;
            case BlockOperation.Write:
                IoUring.IoUring.PrepareWritev(sqe, fd, c.Iov, c.IovCount, c.Offset, userData, fixedFile,
                    (op.Flags & BlockRequestFlags.Fua) != 0 ? RWF_DSYNC : 0);
                break;
            case BlockOperation.Flush:
                IoUring.IoUring.PrepareFsync(sqe, fd, dataOnly: true, userData, fixedFile);
                break;
            default:
                IoUring.IoUring.PrepareFallocate(sqe, fd, op.FallocateMode, c.Offset, c.Remaining, userData, fixedFile);
                break;
        }
    }

    public void OnIoCompleted(ulong tag, int result)
    {
        int index = (int)tag;
        ref Operation op = ref _ops[index];
        if (result < 0)
        {
            int errno = -result;
            if (errno is 4 or 11) { Issue(index); return; }                         // EINTR, EAGAIN: try again
            if (errno == EOPNOTSUPP && op.FallocateMode == (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE) && !_disk.IsBlockDevice)
            {
                op.FallocateMode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;       // e.g. tmpfs: a hole reads as zeros
                Issue(index);
                return;
            }
            if (errno == EOPNOTSUPP && op.Kind == BlockOperation.Discard)
            {
                Finish(index, BlockStatus.Ok);                                          // discard is only a hint
                return;
            }
            LogError(op, Marshal.GetPInvokeErrorMessage(errno));
            Finish(index, errno == ENOSPC ? BlockStatus.NoSpace : BlockStatus.IoError);
            return;
        }
        if (op.Kind is BlockOperation.Read or BlockOperation.Write && (ulong)result < op.Cursor.Remaining)
        {
            if (result == 0)
            {
                LogError(op, "unexpected end of file");
                Finish(index, BlockStatus.IoError);
                return;
            }
            op.Cursor.Advance((ulong)result);   // a short transfer: resume with the rest
            Issue(index);
            return;
        }
        if (op.Kind == BlockOperation.Read && op.Bounce.Active) op.Bounce.CopyToGuest();
        Finish(index, BlockStatus.Ok);
    }

    private void Finish(int index, BlockStatus status)
    {
        ref Operation op = ref _ops[index];
        op.Bounce.Release(_bounce);
        ulong tag = op.Tag;
        op = default;
        _slots.Return(index);
        _sink.Complete(tag, status);
    }

    private void LogError(in Operation op, string error)
    {
        long count = ++_errors;
        // Log the first errors and then every thousandth, so a dying disk cannot flood the log.
        if (count <= 10 || count % 1000 == 0)
            _disk.Log.LogError("{Path}: {Operation} at offset {Offset} ({Length} bytes) failed: {Error} (error #{Count})",
                _disk.Options.Path, op.Kind, op.Cursor.Offset, op.Cursor.Remaining, error, count);
    }

    public void Dispose()
    {
        _io.UnregisterFile(_fileSlot);
        _io.RemoveTarget(_target);
        _bounce.Dispose();
    }
}
