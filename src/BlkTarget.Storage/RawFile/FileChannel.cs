using BlkTarget.Storage.Transfer;
using static BlkTarget.Storage.Interop.FileNative;

namespace BlkTarget.Storage.RawFile;

/// <summary>
/// One reactor's path into a <see cref="FileDisk"/> that is a regular file: reads and writes are READV/WRITEV on the
/// reactor's io_uring straight into guest memory (the virtual offset is the file offset), FLUSH is fdatasync, DISCARD
/// and WRITE_ZEROES are fallocate. Slots, bouncing, resuming and error handling are the base channels'.
/// Block devices have their own channel (<see cref="BlockDeviceChannel"/>): fallocate means other things there.
/// </summary>
internal sealed class FileChannel(FileDisk disk, IoContext io, IBlockCompletionSink sink, int maxInFlight)
    : RawChannel(disk, io, sink, maxInFlight)
{
    protected override void Deallocate(int index, ref IoOperation op) =>
        IssueFallocate(index, op.Kind == BlockOperation.WriteZeroes && (op.Flags & BlockRequestFlags.Unmap) == 0 ? ZeroRange : PunchHole);

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
