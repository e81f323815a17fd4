using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using BlkTarget.Storage.IoUring;
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
        public ulong Offset;
        public ulong Remaining;
        public IoVec* Iov;
        public int IovCount;
        /// <summary>For a bounced read: the guest buffers to copy into on completion.</summary>
        public IoVec* GuestIov;
        public int GuestIovCount;
        /// <summary>The iovec handed to the kernel for a bounced request (advanced on short transfers).</summary>
        public IoVec BounceIov;
        public byte* BounceBuffer;
        public nuint BounceLength;
    }

    private readonly FileDisk _disk;
    private readonly IoContext _io;
    private readonly IBlockCompletionSink _sink;
    private readonly Operation[] _ops;
    private readonly int[] _free;
    private readonly BouncePool _bounce;
    private readonly int _target;
    private readonly int _fileSlot;
    private int _freeCount;
    private long _errors;

    public FileChannel(FileDisk disk, IoContext io, IBlockCompletionSink sink, int maxInFlight)
    {
        _disk = disk;
        _io = io;
        _sink = sink;
        // Pinned: an operation's bounce iovec is handed to the kernel by address.
        _ops = GC.AllocateArray<Operation>(maxInFlight, pinned: true);
        _free = new int[maxInFlight];
        for (int i = 0; i < maxInFlight; i++) _free[i] = maxInFlight - 1 - i;
        _freeCount = maxInFlight;
        _bounce = new BouncePool(Math.Max(disk.MemoryAlignment, 4096));
        _target = io.AddTarget(this);
        _fileSlot = io.RegisterFile(disk.Fd);
    }

    public int InFlight => _ops.Length - _freeCount;

    public void Submit(in BlockRequest request)
    {
        var status = RequestValidation.Check(request, _disk.Info);
        if (status != BlockStatus.Ok || _freeCount == 0)
        {
            _sink.Complete(request.Tag, status != BlockStatus.Ok ? status : BlockStatus.IoError);
            return;
        }
        if (request.Operation is BlockOperation.Read or BlockOperation.Write && request.Length == 0)
        {
            _sink.Complete(request.Tag, BlockStatus.Ok);
            return;
        }
        int index = _free[--_freeCount];
        ref Operation op = ref _ops[index];
        op = new Operation
        {
            Tag = request.Tag,
            Kind = request.Operation,
            Flags = request.Flags,
            Offset = request.Offset,
            Remaining = request.Length,
            Iov = request.Iov,
            IovCount = request.IovCount,
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
                if (!IsAligned(request.Iov, request.IovCount) && !Bounce(ref op))
                {
                    Finish(index, BlockStatus.IoError);
                    return;
                }
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

    private bool IsAligned(IoVec* iov, int count)
    {
        nuint mask = _disk.MemoryAlignment - 1;
        for (int i = 0; i < count; i++)
            if (((nuint)iov[i].Base & mask) != 0 || (iov[i].Length & mask) != 0) return false;
        return true;
    }

    /// <summary>Moves a request whose guest buffers O_DIRECT cannot use onto an aligned bounce buffer.</summary>
    private bool Bounce(ref Operation op)
    {
        byte* buffer = _bounce.Rent((nuint)op.Remaining);
        if (buffer == null) return false;
        op.BounceBuffer = buffer;
        op.BounceLength = (nuint)op.Remaining;
        op.BounceIov = new IoVec(buffer, (nuint)op.Remaining);
        if (op.Kind == BlockOperation.Write) CopyFromIov(op.Iov, op.IovCount, buffer);
        op.GuestIov = op.Iov;
        op.GuestIovCount = op.IovCount;
        op.Iov = (IoVec*)Unsafe.AsPointer(ref op.BounceIov);   // _ops lives on the pinned heap: never moved
        op.IovCount = 1;
        return true;
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
        switch (op.Kind)
        {
            case BlockOperation.Read:
                IoUring.IoUring.PrepareReadv(sqe, fd, op.Iov, op.IovCount, op.Offset, userData, fixedFile);
                break;
            case BlockOperation.Write:
                IoUring.IoUring.PrepareWritev(sqe, fd, op.Iov, op.IovCount, op.Offset, userData, fixedFile,
                    (op.Flags & BlockRequestFlags.Fua) != 0 ? RWF_DSYNC : 0);
                break;
            case BlockOperation.Flush:
                IoUring.IoUring.PrepareFsync(sqe, fd, dataOnly: true, userData, fixedFile);
                break;
            default:
                IoUring.IoUring.PrepareFallocate(sqe, fd, op.FallocateMode, op.Offset, op.Remaining, userData, fixedFile);
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
            LogError(op, errno);
            Finish(index, errno == ENOSPC ? BlockStatus.NoSpace : BlockStatus.IoError);
            return;
        }
        if (op.Kind is BlockOperation.Read or BlockOperation.Write && (ulong)result < op.Remaining)
        {
            if (result == 0)
            {
                LogError(op, 0);
                Finish(index, BlockStatus.IoError);
                return;
            }
            Advance(ref op, (ulong)result);
            Issue(index);
            return;
        }
        if (op.Kind == BlockOperation.Read && op.GuestIov != null) CopyToIov(op.BounceBuffer, op.GuestIov, op.GuestIovCount);
        Finish(index, BlockStatus.Ok);
    }

    /// <summary>Resumes a short transfer: drops the bytes done from the front of the iovec array (ours to change).</summary>
    private static void Advance(ref Operation op, ulong done)
    {
        op.Offset += done;
        op.Remaining -= done;
        while (done > 0)
        {
            if (done >= op.Iov->Length)
            {
                done -= op.Iov->Length;
                op.Iov++;
                op.IovCount--;
            }
            else
            {
                op.Iov->Base += done;
                op.Iov->Length -= (nuint)done;
                done = 0;
            }
        }
    }

    private void Finish(int index, BlockStatus status)
    {
        ref Operation op = ref _ops[index];
        if (op.BounceBuffer != null) _bounce.Return(op.BounceBuffer, op.BounceLength);
        ulong tag = op.Tag;
        op = default;
        _free[_freeCount++] = index;
        _sink.Complete(tag, status);
    }

    private void LogError(in Operation op, int errno)
    {
        long count = ++_errors;
        // Log the first errors and then every thousandth, so a dying disk cannot flood the log.
        if (count <= 10 || count % 1000 == 0)
            _disk.Log.LogError("{Path}: {Operation} at offset {Offset} ({Length} bytes) failed: {Error} (error #{Count})",
                _disk.Options.Path, op.Kind, op.Offset, op.Remaining,
                errno == 0 ? "unexpected end of file" : Marshal.GetPInvokeErrorMessage(errno), count);
    }

    private static void CopyFromIov(IoVec* iov, int count, byte* destination)
    {
        for (int i = 0; i < count; i++)
        {
            Buffer.MemoryCopy(iov[i].Base, destination, (long)iov[i].Length, (long)iov[i].Length);
            destination += iov[i].Length;
        }
    }

    private static void CopyToIov(byte* source, IoVec* iov, int count)
    {
        for (int i = 0; i < count; i++)
        {
            Buffer.MemoryCopy(source, iov[i].Base, (long)iov[i].Length, (long)iov[i].Length);
            source += iov[i].Length;
        }
    }

    public void Dispose()
    {
        _io.UnregisterFile(_fileSlot);
        _io.RemoveTarget(_target);
        _bounce.Dispose();
    }
}
