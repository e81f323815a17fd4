using System.Runtime.InteropServices;
using BlkTarget.Storage.Transfer;
using Microsoft.Extensions.Logging;
using static BlkTarget.Storage.Interop.FileNative;

namespace BlkTarget.Storage.Image;

/// <summary>
/// One reactor's path into an <see cref="ImageDisk"/>. A read or write is walked cluster run by cluster run:
/// a run of physically contiguous allocated clusters is one READV/WRITEV on the reactor's io_uring with the
/// guest's own iovecs (zero-copy), a run of unallocated clusters reads as zeros without I/O, and a write to an
/// unallocated cluster first allocates it (a metadata operation under the image's lock, synchronous: it happens
/// once per cluster). Flush is an io_uring fsync; discard and write-zeroes deallocate whole clusters and punch
/// partial ones.
/// </summary>
internal sealed unsafe class ImageChannel : IBlockChannel, IIoCompletionTarget
{
    private struct Operation
    {
        public ulong Tag;
        public BlockOperation Kind;
        public BlockRequestFlags Flags;
        public TransferCursor Cursor;
        /// <summary>Bytes of the piece in flight, and the iovec trimmed to end it (restored on completion).</summary>
        public ulong PieceLength;
        public int TrimmedIndex;
        public nuint TrimmedLength;
        public int PieceIovCount;
        public int PendingFreeAtFlush;
        public BounceBuffer Bounce;
    }

    private readonly ImageDisk _disk;
    private readonly ImageFile _image;
    private readonly IoContext _io;
    private readonly IBlockCompletionSink _sink;
    private readonly Operation[] _ops;
    private readonly SlotStack _slots;
    private readonly BouncePool _bounce;
    private readonly int _target;
    private readonly int _fileSlot;
    private readonly int _shift;
    private readonly ulong _clusterMask;
    private long _errors;

    public ImageChannel(ImageDisk disk, IoContext io, IBlockCompletionSink sink, int maxInFlight)
    {
        _disk = disk;
        _image = disk.Image;
        _io = io;
        _sink = sink;
        // Pinned: an operation's bounce iovec is handed to the kernel by address.
        _ops = GC.AllocateArray<Operation>(maxInFlight, pinned: true);
        _slots = new SlotStack(maxInFlight);
        _bounce = new BouncePool(Math.Max(disk.MemoryAlignment, 4096));
        _shift = _image.Header.ClusterShift;
        _clusterMask = _image.ClusterSize - 1;
        _target = io.AddTarget(this);
        _fileSlot = io.RegisterFile(_image.Fd);
    }

    public int InFlight => _slots.InUse;

    public void Submit(in BlockRequest request)
    {
        var status = RequestValidation.Check(request, _disk.Info);
        if (status == BlockStatus.Ok && request.Operation is BlockOperation.Discard or BlockOperation.WriteZeroes)
        {
            _sink.Complete(request.Tag, Deallocate(request.Offset, request.Length));   // metadata work, done inline
            return;
        }
        if (status != BlockStatus.Ok || !_slots.TryTake(out int index))
        {
            _sink.Complete(request.Tag, status != BlockStatus.Ok ? status : BlockStatus.IoError);
            return;
        }
        ref Operation op = ref _ops[index];
        op = new Operation { Tag = request.Tag, Kind = request.Operation, Flags = request.Flags, Cursor = new TransferCursor(request) };
        if (request.Operation == BlockOperation.Flush)
        {
            lock (_image.MetadataLock) op.PendingFreeAtFlush = _image.PendingFreeCount;
            var sqe = _io.NextSqe();
            if (sqe == null)
            {
                Finish(index, BlockStatus.IoError);
                return;
            }
            // A full fsync: the holes punched by deallocation must be durable before their clusters are reused.
            IoUring.IoUring.PrepareFsync(sqe, FileArgument(out bool fixedFile), dataOnly: false, IoContext.UserData(_target, (ulong)index), fixedFile);
            return;
        }
        if (RequestValidation.IovBytes(request.Iov, request.IovCount) != request.Length)
        {
            Finish(index, BlockStatus.IoError);
            return;
        }
        if (!op.Cursor.IsAligned(_disk.MemoryAlignment)) op.Bounce.Begin(ref op.Cursor, request.Operation == BlockOperation.Write, _bounce);
        Continue(index);
    }

    private int FileArgument(out bool fixedFile)
    {
        fixedFile = _fileSlot >= 0;
        return fixedFile ? _fileSlot : _image.Fd;
    }

    /// <summary>Issues the next cluster run of a read or write, or finishes the request when none is left.</summary>
    private void Continue(int index)
    {
        ref Operation op = ref _ops[index];
        ref TransferCursor c = ref op.Cursor;
        while (c.Remaining > 0)
        {
            ulong virtualCluster = c.Offset >> _shift;
            ulong physical = _image.Entry(virtualCluster);
            if (physical == 0 && op.Kind == BlockOperation.Write)
            {
                // Allocate every unallocated cluster this write still covers in one go, so they come out contiguous.
                ulong clusters = ((c.Offset + c.Remaining - 1) >> _shift) - virtualCluster + 1;
                try
                {
                    lock (_image.MetadataLock) physical = _image.AllocateRun(virtualCluster, clusters);
                }
                catch (IOException e)
                {
                    LogError(op, e.Message);
                    Finish(index, BlockStatus.IoError);
                    return;
                }
            }
            ulong run = _image.MappedRunLength(c.Offset, c.Remaining);
            if (physical == 0)
            {
                c.ZeroFront(run);
                c.Advance(run);
                continue;
            }
            Issue(index, (physical << _shift) + (c.Offset & _clusterMask), run);
            return;
        }
        if (op.Kind == BlockOperation.Read && op.Bounce.Active) op.Bounce.CopyToGuest();
        Finish(index, BlockStatus.Ok);
    }

    private void Issue(int index, ulong fileOffset, ulong length)
    {
        ref Operation op = ref _ops[index];
        TrimView(ref op, length);
        var sqe = _io.NextSqe();
        if (sqe == null)
        {
            RestoreView(ref op);
            Finish(index, BlockStatus.IoError);
            return;
        }
        int fd = FileArgument(out bool fixedFile);
        ulong userData = IoContext.UserData(_target, (ulong)index);
        if (op.Kind == BlockOperation.Read)
            IoUring.IoUring.PrepareReadv(sqe, fd, op.Cursor.Iov, op.PieceIovCount, fileOffset, userData, fixedFile);
        else
            IoUring.IoUring.PrepareWritev(sqe, fd, op.Cursor.Iov, op.PieceIovCount, fileOffset, userData, fixedFile,
                (op.Flags & BlockRequestFlags.Fua) != 0 ? RWF_DSYNC : 0);
    }

    public void OnIoCompleted(ulong tag, int result)
    {
        int index = (int)tag;
        ref Operation op = ref _ops[index];
        if (op.Kind == BlockOperation.Flush)
        {
            if (result < 0)
            {
                LogError(op, Marshal.GetPInvokeErrorMessage(-result));
                Finish(index, BlockStatus.IoError);
                return;
            }
            lock (_image.MetadataLock) _image.FlushCompleted(op.PendingFreeAtFlush);
            Finish(index, BlockStatus.Ok);
            return;
        }
        RestoreView(ref op);
        if (result < 0)
        {
            int errno = -result;
            if (errno is 4 or 11)
            {
                Continue(index);
                return;
            }
            LogError(op, Marshal.GetPInvokeErrorMessage(errno));
            Finish(index, errno == ENOSPC ? BlockStatus.NoSpace : BlockStatus.IoError);
            return;
        }
        ulong done = (ulong)result;
        if (done == 0 && op.Kind == BlockOperation.Read)
        {
            // A cluster mapped past the end of the file (its size update was lost in a crash) reads as zeros.
            op.Cursor.ZeroFront(op.PieceLength);
            done = op.PieceLength;
        }
        else if (done == 0)
        {
            LogError(op, "write made no progress");
            Finish(index, BlockStatus.IoError);
            return;
        }
        op.Cursor.Advance(Math.Min(done, op.PieceLength));
        Continue(index);
    }

    /// <summary>Limits the iovec array to the first <paramref name="length"/> bytes for one piece.</summary>
    private static void TrimView(ref Operation op, ulong length)
    {
        op.PieceLength = length;
        IoVec* iov = op.Cursor.Iov;
        ulong covered = 0;
        int i = 0;
        while (covered + iov[i].Length < length) covered += iov[i++].Length;
        op.TrimmedIndex = i;
        op.TrimmedLength = iov[i].Length;
        iov[i].Length = (nuint)(length - covered);
        op.PieceIovCount = i + 1;
    }

    private static void RestoreView(ref Operation op)
    {
        if (op.PieceIovCount == 0) return;
        op.Cursor.Iov[op.TrimmedIndex].Length = op.TrimmedLength;
        op.PieceIovCount = 0;
    }

    /// <summary>DISCARD / WRITE_ZEROES: whole clusters are unmapped (read as zeros, space returned); the partial
    /// clusters at either end get a hole punched where they are allocated.</summary>
    private BlockStatus Deallocate(ulong offset, ulong length)
    {
        if (length == 0) return BlockStatus.Ok;
        ulong end = offset + length;
        ulong firstWhole = (offset + _clusterMask) >> _shift;
        ulong endWhole = end >> _shift;
        try
        {
            lock (_image.MetadataLock)
            {
                if (firstWhole < endWhole) _image.Deallocate(firstWhole, endWhole - firstWhole);
                if (firstWhole > endWhole)
                {
                    PunchPartial(offset, length);   // inside one cluster
                }
                else
                {
                    if ((offset & _clusterMask) != 0) PunchPartial(offset, (firstWhole << _shift) - offset);
                    if ((end & _clusterMask) != 0) PunchPartial(endWhole << _shift, end - (endWhole << _shift));
                }
            }
            return BlockStatus.Ok;
        }
        catch (IOException e)
        {
            _disk.Log.LogError("{Path}: discard at {Offset} ({Length} bytes) failed: {Error}", _image.Path, offset, length, e.Message);
            return BlockStatus.IoError;
        }
    }

    private void PunchPartial(ulong offset, ulong length)
    {
        ulong physical = _image.Entry(offset >> _shift);
        if (physical == 0 || length == 0) return;
        long fileOffset = (long)((physical << _shift) + (offset & _clusterMask));
        if (fallocate(_image.Fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, fileOffset, (long)length) != 0)
            throw new IOException($"punching {length} bytes at {fileOffset} failed: {LastError()}");
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
        if (count <= 10 || count % 1000 == 0)
            _disk.Log.LogError("{Path}: {Operation} at virtual offset {Offset} failed: {Error} (error #{Count})", _image.Path, op.Kind, op.Cursor.Offset, error, count);
    }

    public void Dispose()
    {
        _io.UnregisterFile(_fileSlot);
        _io.RemoveTarget(_target);
        _bounce.Dispose();
    }
}
