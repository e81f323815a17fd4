using BlkTarget.Storage.Transfer;
using static BlkTarget.Storage.Interop.FileNative;

namespace BlkTarget.Storage.RawFile;

/// <summary>
/// One reactor's path into a <see cref="FileDisk"/> that is a regular file: reads and writes are READV/WRITEV on the
/// reactor's io_uring straight into guest memory (the virtual offset is the file offset), FLUSH is fdatasync, DISCARD
/// and WRITE_ZEROES are fallocate. Slots, bouncing, resuming and error handling are <see cref="IoUringChannel"/>'s.
/// Block devices have their own channel (<see cref="BlockDeviceChannel"/>): fallocate means other things there.
/// </summary>
internal sealed class FileChannel : IoUringChannel
{
    private const int ZeroRange = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
    private const int PunchHole = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;

    public FileChannel(FileDisk disk, IoContext io, IBlockCompletionSink sink, int maxInFlight)
        : base(io, sink, maxInFlight, disk.Fd, disk.Info, disk.MemoryAlignment, disk.Log, disk.Options.Path)
    {
    }

    protected override bool FlushIsDataOnly => true;

    protected override Piece MapPiece(int index, ref IoOperation op, out ulong fileOffset, out ulong length)
    {
        fileOffset = op.Cursor.Offset;
        length = op.Cursor.Remaining;
        return Piece.Data;
    }

    protected override void StartDeallocation(int index)
    {
        ref IoOperation op = ref Ops[index];
        if (op.Cursor.Remaining == 0)
        {
            Finish(index, BlockStatus.Ok);
            return;
        }
        op.FallocateMode = op.Kind == BlockOperation.WriteZeroes && (op.Flags & BlockRequestFlags.Unmap) == 0 ? ZeroRange : PunchHole;
        op.PieceFileOffset = op.Cursor.Offset;
        op.PieceLength = op.Cursor.Remaining;
        op.Step = IoStep.Fallocate;
        Issue(index);
    }

    protected override void FallocateCompleted(int index, int result)
    {
        ref IoOperation op = ref Ops[index];
        int errno = -result;
        if (result < 0 && errno == EOPNOTSUPP && op.FallocateMode == ZeroRange)
        {
            op.FallocateMode = PunchHole;                  // e.g. tmpfs: a hole reads as zeros
            Issue(index);
            return;
        }
        if (result < 0 && errno == EOPNOTSUPP && op.Kind == BlockOperation.Discard)
        {
            Finish(index, BlockStatus.Ok);                 // discard is only a hint
            return;
        }
        base.FallocateCompleted(index, result);
    }
}
