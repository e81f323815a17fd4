using BlkTarget.Storage.Transfer;
using static BlkTarget.Storage.Interop.FileNative;

namespace BlkTarget.Storage.RawFile;

/// <summary>
/// One reactor's path into a <see cref="FileDisk"/> that is a block device. Reads, writes and FLUSH go as for a file
/// (<see cref="RawChannel"/>); DISCARD and WRITE_ZEROES use the block device's own operations, all asynchronous:
/// <list type="bullet">
/// <item>DISCARD: BLOCK_URING_CMD_DISCARD through the ring (BLKDISCARD's io_uring form). When the kernel refuses it
/// (before 6.12) the discard goes to the disk's <see cref="BlockDiscardWorker"/> (BLKDISCARD on its own thread).
/// A device that turns out unable to discard answers UNSUPP, never a silent success.</item>
/// <item>WRITE_ZEROES: fallocate(ZERO_RANGE | KEEP_SIZE), which on a block device is BLKZEROOUT: the device's
/// write-zeroes command without unmapping, or zero pages written by the kernel when it has none.</item>
/// <item>WRITE_ZEROES with UNMAP: fallocate(PUNCH_HOLE | KEEP_SIZE), which on a block device is a write-zeroes that may
/// deallocate but never falls back to writing zeros; where the device has no write-zeroes command (EOPNOTSUPP, also
/// when it lost it at run time, as loop devices over tmpfs do) it becomes a ZERO_RANGE. The range reads as zeros
/// either way.</item>
/// </list>
/// A discard is never emulated by a hole punch: on a block device that is a write-zeroes, and fails where the device
/// has none.
/// </summary>
internal sealed class BlockDeviceChannel : RawChannel
{
    /// <summary>On a block device PUNCH_HOLE is no hole punch but a write-zeroes that may deallocate.</summary>
    private const int ZeroMayUnmap = PunchHole;
    private readonly BlockDiscardWorker? _discardWorker;
    // Cleared at the first EOPNOTSUPP of a may-unmap zeroing: the device has no write-zeroes command (any more).
    private bool _zeroesMayUnmap;

    public BlockDeviceChannel(FileDisk disk, BlockDiscardWorker? discardWorker, IoContext io, IBlockCompletionSink sink, int maxInFlight)
        : base(disk, io, sink, maxInFlight)
    {
        _discardWorker = discardWorker;
        _zeroesMayUnmap = disk.Info.ZeroesCanUnmap;
    }

    protected override void Deallocate(int index, ref IoOperation op)
    {
        if (op.Kind == BlockOperation.WriteZeroes)
            IssueFallocate(index, (op.Flags & BlockRequestFlags.Unmap) != 0 && _zeroesMayUnmap ? ZeroMayUnmap : ZeroRange);
        // Validation let the discard through only if the disk can discard, and then it has a worker.
        else if (_discardWorker!.Preferred) DiscardOnWorker(index);
        else IssueDiscard(index);
    }

    private void IssueDiscard(int index)
    {
        Ops[index].Step = IoStep.BlockDiscard;
        Issue(index);
    }

    private void DiscardOnWorker(int index)
    {
        ref IoOperation op = ref Ops[index];
        BeginHelper(index);
        _discardWorker!.Enqueue(Io, Target, (ulong)index, op.PieceFileOffset, op.PieceLength);
    }

    protected override void BlockDiscardCompleted(int index, int result)
    {
        int errno = -result;
        if (result >= 0) Finish(index, BlockStatus.Ok);
        else if (errno is EINTR or EAGAIN) IssueDiscard(index);
        // Refused: by a kernel without the command (EOPNOTSUPP; EINVAL before 5.19: the range itself was validated) or
        // by a device that cannot discard. The ioctl tells the two apart.
        else if (errno is EOPNOTSUPP or EINVAL) DiscardOnWorker(index);
        else Fail(index, errno);
    }

    protected override void HelperCompleted(int index, int result)
    {
        if (result >= 0)
        {
            Finish(index, BlockStatus.Ok);
            return;
        }
        if (-result != EOPNOTSUPP)
        {
            Fail(index, -result);
            return;
        }
        // The device stopped discarding after we advertised it: say so rather than pretend.
        LogError(Ops[index], "the device no longer supports discard");
        Finish(index, BlockStatus.Unsupported);
    }

    protected override void FallocateCompleted(int index, int result)
    {
        ref IoOperation op = ref Ops[index];
        if (result == -EOPNOTSUPP && op.FallocateMode == ZeroMayUnmap)
        {
            _zeroesMayUnmap = false;
            op.FallocateMode = ZeroRange;
            Issue(index);
            return;
        }
        base.FallocateCompleted(index, result);
    }
}
