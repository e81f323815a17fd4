using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using BlkTarget.Storage.RawFile;
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
        public ulong Offset;
        public ulong Remaining;
        public IoVec* Iov;
        public int IovCount;
        /// <summary>Bytes of the piece in flight, and the iovec trimmed to end it (restored on completion).</summary>
        public ulong PieceLength;
        public int TrimmedIndex;
        public nuint TrimmedLength;
        public int PieceIovCount;
        public int PendingFreeAtFlush;
        public IoVec* GuestIov;
        public int GuestIovCount;
        public IoVec BounceIov;
        public byte* BounceBuffer;
        public nuint BounceLength;
    }

    private readonly ImageDisk _disk;
    private readonly ImageFile _image;
    private readonly IoContext _io;
    private readonly IBlockCompletionSink _sink;
    private readonly Operation[] _ops;
    private readonly int[] _free;
    private readonly BouncePool _bounce;
    private readonly int _target;
    private readonly int _fileSlot;
    private readonly int _shift;
    private readonly ulong _clusterMask;
    private int _freeCount;
    private long _errors;

    public ImageChannel(ImageDisk disk, IoContext io, IBlockCompletionSink sink, int maxInFlight)
    {
        _disk = disk;
        _image = disk.Image;
        _io = io;
        _sink = sink;
        _ops = GC.AllocateArray<Operation>(maxInFlight, pinned: true);
        _free = new int[maxInFlight];
        for (int i = 0; i < maxInFlight; i++) _free[i] = maxInFlight - 1 - i;
        _freeCount = maxInFlight;
        _bounce = new BouncePool(Math.Max(disk.MemoryAlignment, 4096));
        _shift = _image.Header.ClusterShift;
        _clusterMask = _image.ClusterSize - 1;
        _target = io.AddTarget(this);
        _fileSlot = io.RegisterFile(_image.Fd);
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
        switch (request.Operation)
        {
            case BlockOperation.Discard:
            case BlockOperation.WriteZeroes:
                _sink.Complete(request.Tag, Deallocate(request.Offset, request.Length));
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
        if (!IsAligned(request.Iov, request.IovCount) && !Bounce(ref op))
        {
            Finish(index, BlockStatus.IoError);
            return;
        }
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
        while (op.Remaining > 0)
        {
            ulong virtualCluster = op.Offset >> _shift;
            ulong physical = _image.Entry(virtualCluster);
            if (physical == 0 && op.Kind == BlockOperation.Write)
            {
                try
                {
                    lock (_image.MetadataLock) physical = _image.Allocate(virtualCluster);
                }
                catch (IOException e)
                {
                    LogError(op, e.Message);
                    Finish(index, BlockStatus.IoError);
                    return;
                }
            }
            ulong run = RunLength(op.Offset, op.Remaining, virtualCluster, physical);
            if (physical == 0)
            {
                ZeroFront(ref op, run);
                Advance(ref op, run);
                continue;
            }
            Issue(index, (physical << _shift) + (op.Offset & _clusterMask), run);
            return;
        }
        if (op.Kind == BlockOperation.Read && op.GuestIov != null) CopyToIov(op.BounceBuffer, op.GuestIov, op.GuestIovCount);
        Finish(index, BlockStatus.Ok);
    }

    /// <summary>How many bytes from <paramref name="offset"/> lie in clusters that continue the same physical run
    /// (all unallocated, or allocated back to back).</summary>
    private ulong RunLength(ulong offset, ulong remaining, ulong virtualCluster, ulong physical)
    {
        ulong run = Math.Min(_image.ClusterSize - (offset & _clusterMask), remaining);
        while (run < remaining)
        {
            ulong next = (offset + run) >> _shift;
            ulong nextPhysical = _image.Entry(next);
            bool continues = physical == 0 ? nextPhysical == 0 : nextPhysical == physical + (next - virtualCluster);
            if (!continues) break;
            run += Math.Min(_image.ClusterSize, remaining - run);
        }
        return run;
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
            IoUring.IoUring.PrepareReadv(sqe, fd, op.Iov, op.PieceIovCount, fileOffset, userData, fixedFile);
        else
            IoUring.IoUring.PrepareWritev(sqe, fd, op.Iov, op.PieceIovCount, fileOffset, userData, fixedFile,
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
            ZeroFront(ref op, op.PieceLength);
            done = op.PieceLength;
        }
        else if (done == 0)
        {
            LogError(op, "write made no progress");
            Finish(index, BlockStatus.IoError);
            return;
        }
        Advance(ref op, Math.Min(done, op.PieceLength));
        Continue(index);
    }

    /// <summary>Limits the iovec array to the first <paramref name="length"/> bytes for one piece.</summary>
    private static void TrimView(ref Operation op, ulong length)
    {
        op.PieceLength = length;
        ulong covered = 0;
        int i = 0;
        while (covered + op.Iov[i].Length < length) covered += op.Iov[i++].Length;
        op.TrimmedIndex = i;
        op.TrimmedLength = op.Iov[i].Length;
        op.Iov[i].Length = (nuint)(length - covered);
        op.PieceIovCount = i + 1;
    }

    private static void RestoreView(ref Operation op)
    {
        if (op.PieceIovCount == 0) return;
        op.Iov[op.TrimmedIndex].Length = op.TrimmedLength;
        op.PieceIovCount = 0;
    }

    private static void Advance(ref Operation op, ulong done)
    {
        op.Offset += done;
        op.Remaining -= done;
        while (done > 0 && op.IovCount > 0)
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

    private static void ZeroFront(ref Operation op, ulong length)
    {
        for (int i = 0; i < op.IovCount && length > 0; i++)
        {
            ulong n = Math.Min(length, op.Iov[i].Length);
            new Span<byte>(op.Iov[i].Base, (int)n).Clear();
            length -= n;
        }
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

    private bool IsAligned(IoVec* iov, int count)
    {
        nuint mask = _disk.MemoryAlignment - 1;
        for (int i = 0; i < count; i++)
            if (((nuint)iov[i].Base & mask) != 0 || (iov[i].Length & mask) != 0) return false;
        return true;
    }

    private bool Bounce(ref Operation op)
    {
        byte* buffer = _bounce.Rent((nuint)op.Remaining);
        if (buffer == null) return false;
        op.BounceBuffer = buffer;
        op.BounceLength = (nuint)op.Remaining;
        op.BounceIov = new IoVec(buffer, (nuint)op.Remaining);
        if (op.Kind == BlockOperation.Write)
        {
            byte* destination = buffer;
            for (int i = 0; i < op.IovCount; i++)
            {
                Buffer.MemoryCopy(op.Iov[i].Base, destination, (long)op.Iov[i].Length, (long)op.Iov[i].Length);
                destination += op.Iov[i].Length;
            }
        }
        op.GuestIov = op.Iov;
        op.GuestIovCount = op.IovCount;
        op.Iov = (IoVec*)Unsafe.AsPointer(ref op.BounceIov);   // _ops lives on the pinned heap
        op.IovCount = 1;
        return true;
    }

    private static void CopyToIov(byte* source, IoVec* iov, int count)
    {
        for (int i = 0; i < count; i++)
        {
            Buffer.MemoryCopy(source, iov[i].Base, (long)iov[i].Length, (long)iov[i].Length);
            source += iov[i].Length;
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

    private void LogError(in Operation op, string error)
    {
        long count = ++_errors;
        if (count <= 10 || count % 1000 == 0)
            _disk.Log.LogError("{Path}: {Operation} at virtual offset {Offset} failed: {Error} (error #{Count})", _image.Path, op.Kind, op.Offset, error, count);
    }

    public void Dispose()
    {
        _io.UnregisterFile(_fileSlot);
        _io.RemoveTarget(_target);
        _bounce.Dispose();
    }
}
