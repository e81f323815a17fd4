using BlkTarget.Storage.Transfer;
using static BlkTarget.Storage.Interop.FileNative;

namespace BlkTarget.Storage.RawFile;

/// <summary>
/// What the channels into a <see cref="FileDisk"/> share, file or block device: the disk's bytes are the file's (a
/// piece of a read or write is all the rest of it, at the same offset), FLUSH is fdatasync, and the fallocate modes
/// DISCARD and WRITE_ZEROES are built from (what they do differs between files and block devices).
/// </summary>
internal abstract class RawChannel : IoUringChannel
{
    protected const int ZeroRange = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
    protected const int PunchHole = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;

    protected RawChannel(FileDisk disk, IoContext io, IBlockCompletionSink sink, int maxInFlight)
        : base(io, sink, maxInFlight, disk.Fd, disk, disk.MemoryAlignment, disk.Log, disk.Options.Path)
    {
    }

    protected override bool FlushIsDataOnly => true;

    protected override Piece MapPiece(int index, ref IoOperation op, out ulong fileOffset, out ulong length)
    {
        fileOffset = op.Cursor.Offset;
        length = op.Cursor.Remaining;
        return Piece.Data;
    }

    protected sealed override void StartDeallocation(int index)
    {
        ref IoOperation op = ref Ops[index];
        if (op.Cursor.Remaining == 0)
        {
            Finish(index, BlockStatus.Ok);
            return;
        }
        op.PieceFileOffset = op.Cursor.Offset;          // one piece: the kernel splits a range as the medium needs
        op.PieceLength = op.Cursor.Remaining;
        Deallocate(index, ref op);
    }

    /// <summary>Begins a DISCARD or WRITE_ZEROES of <c>op.PieceLength</c> (&gt; 0) bytes at <c>op.PieceFileOffset</c>.</summary>
    protected abstract void Deallocate(int index, ref IoOperation op);

    /// <summary>Submits fallocate <paramref name="mode"/> over the operation's range.</summary>
    protected void IssueFallocate(int index, int mode)
    {
        ref IoOperation op = ref Ops[index];
        op.FallocateMode = mode;
        op.Step = IoStep.Fallocate;
        Issue(index);
    }
}
