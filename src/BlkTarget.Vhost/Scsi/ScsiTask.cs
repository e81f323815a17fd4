using BlkTarget.Storage;
using BlkTarget.Storage.Offload;
using BlkTarget.Vhost.Scsi.Atomicity;

namespace BlkTarget.Vhost.Scsi;

/// <summary>Where a LUN sends the backend requests of a command (the running request queue). The queue counts
/// each one before handing it to <paramref name="channel"/>, because synchronous backends complete inside Submit.</summary>
public interface IScsiBlockSubmitter
{
    void Submit(ushort tag, IBlockChannel channel, in BlockRequest request);

    /// <summary>Writes <paramref name="block"/> (one logical block, copied before this returns) to every block of
    /// [<paramref name="offset"/>, +<paramref name="length"/>) on <paramref name="channel"/>, in as many write
    /// requests as it takes; the command finishes when the last one completes or one fails.</summary>
    void SubmitRepeated(ushort tag, IBlockChannel channel, ReadOnlySpan<byte> block, ulong offset, ulong length, BlockRequestFlags flags);

    /// <summary>Runs <paramref name="job"/> on <paramref name="queue"/>'s helper thread; the command finishes when it
    /// returned (a failure is a MEDIUM ERROR, WRITE ERROR).</summary>
    void SubmitBlocking(ushort tag, BlockingJobQueue queue, IBlockingJob job);

    /// <summary>Admits the write command <paramref name="tag"/> to <paramref name="ranges"/> past the disk's
    /// <paramref name="gate"/>: true when it may submit now (it counts as a write in flight until it completes), false
    /// when a COMPARE AND WRITE holds an overlapping range (the command is retried from its CDB on a later poll).</summary>
    bool TryBeginWrite(ushort tag, CompareAndWriteGate gate, scoped ReadOnlySpan<BlockRange> ranges);

    /// <summary>Runs COMPARE AND WRITE (SBC-3 5.2) of <paramref name="range"/> with the Data-Out buffer
    /// <paramref name="dataOut"/> (verify data then write data, exactly twice the range's bytes); the command finishes
    /// with GOOD, MISCOMPARE or a MEDIUM ERROR.</summary>
    unsafe void SubmitCompareAndWrite(ushort tag, IBlockChannel channel, CompareAndWriteGate gate, BlockRange range, uint blockSize,
        IoVec* dataOut, int dataOutCount, BlockRequestFlags writeFlags);
}

/// <summary>
/// One SCSI command while a LUN executes it: the CDB (a private copy), the data-out and data-in buffers
/// (iovecs into guest memory, our own copies), a per-queue scratch buffer, and the outcome. Lives on the
/// stack of the request queue; nothing here is allocated per command.
/// </summary>
public unsafe ref struct ScsiTask
{
    public ReadOnlySpan<byte> Cdb;
    public IoVec* DataOut;
    public int DataOutCount;
    public ulong DataOutBytes;
    public IoVec* DataIn;
    public int DataInCount;
    public ulong DataInBytes;
    /// <summary>Per-queue buffer for emulated data-in and copied parameter lists (at least 4 KiB).</summary>
    public Span<byte> Scratch;
    public IBlockChannel? Channel;
    public IScsiBlockSubmitter? Submitter;
    public ushort Tag;

    // ---- outcome ----
    public byte Status;
    public SenseCode Sense;
    /// <summary>virtio-scsi response: OK, or OVERRUN when the buffers cannot hold the transfer.</summary>
    public byte Response;
    /// <summary>Bytes placed (or, for submitted reads, to be placed) in the data-in buffers.</summary>
    public ulong DataInWritten;
    /// <summary>Bytes of the data-out buffers the command used.</summary>
    public ulong DataOutConsumed;
    /// <summary>Backend requests submitted; the command finishes when they complete.</summary>
    public int Submitted;
    /// <summary>What the submitted requests do (selects the MEDIUM ERROR sense when one fails).</summary>
    public BlockOperation Operation;
    /// <summary>The command waits for a COMPARE AND WRITE on an overlapping range: nothing was submitted, the outcome
    /// above means nothing, and the queue executes it again from its CDB later.</summary>
    public bool Deferred;

    public void Good() => Status = ScsiStatus.Good;

    public void Fail(SenseCode sense)
    {
        Status = ScsiStatus.CheckCondition;
        Sense = sense;
        DataInWritten = 0;
        DataOutConsumed = 0;
    }

    /// <summary>The buffers cannot hold the transfer the CDB asks for (virtio-scsi OVERRUN).</summary>
    public void Overrun()
    {
        Response = VirtioScsi.Overrun;
        DataInWritten = 0;
    }

    /// <summary>Completes with GOOD, returning <paramref name="data"/> truncated to the allocation length and to
    /// the data-in buffers (both are normal for SCSI: the initiator sees the residual).</summary>
    public void ReturnData(ReadOnlySpan<byte> data, ulong allocationLength)
    {
        int n = (int)Math.Min((ulong)data.Length, Math.Min(allocationLength, DataInBytes));
        ulong copied = 0;
        for (int i = 0; i < DataInCount && copied < (ulong)n; i++)
        {
            int piece = (int)Math.Min((ulong)DataIn[i].Length, (ulong)n - copied);
            data.Slice((int)copied, piece).CopyTo(new Span<byte>(DataIn[i].Base, piece));
            copied += (ulong)piece;
        }
        DataInWritten = copied;
        Status = ScsiStatus.Good;
    }

    /// <summary>Copies a parameter list of <paramref name="length"/> bytes from the data-out buffers into the
    /// scratch buffer. False (with the task failed) when the buffers hold less or the list is too long.</summary>
    public bool TryReadParameters(uint length, out ReadOnlySpan<byte> parameters)
    {
        parameters = default;
        if (length > DataOutBytes)
        {
            Overrun();
            return false;
        }
        if (length > (uint)Scratch.Length)
        {
            Fail(SenseCode.ParameterListLengthError);
            return false;
        }
        int copied = 0;
        for (int i = 0; i < DataOutCount && copied < (int)length; i++)
        {
            int piece = (int)Math.Min((ulong)DataOut[i].Length, length - (uint)copied);
            new ReadOnlySpan<byte>(DataOut[i].Base, piece).CopyTo(Scratch[copied..]);
            copied += piece;
        }
        parameters = Scratch[..copied];
        DataOutConsumed = length;
        return true;
    }

    public void Submit(in BlockRequest request)
    {
        Submitted++;
        Submitter!.Submit(Tag, Channel!, request);
    }

    /// <summary>WRITE SAME with a pattern: <paramref name="block"/> written to every block of the range.</summary>
    public void SubmitRepeated(ReadOnlySpan<byte> block, ulong offset, ulong length, BlockRequestFlags flags)
    {
        Submitted++;
        Operation = BlockOperation.Write;
        Submitter!.SubmitRepeated(Tag, Channel!, block, offset, length, flags);
    }

    /// <summary>Blocking work the command waits for (PERSISTENT RESERVE OUT with APTPL or PREEMPT AND ABORT).</summary>
    public void SubmitBlocking(BlockingJobQueue queue, IBlockingJob job)
    {
        Submitted++;
        Operation = BlockOperation.Write;
        Submitter!.SubmitBlocking(Tag, queue, job);
    }

    /// <summary>Admits this write command to <paramref name="range"/> (see <see cref="IScsiBlockSubmitter.TryBeginWrite"/>);
    /// false: <see cref="Deferred"/>, return without submitting.</summary>
    public bool TryBeginWrite(CompareAndWriteGate gate, BlockRange range)
    {
        scoped ReadOnlySpan<BlockRange> one = new(in range);
        return TryBeginWrite(gate, one);
    }

    /// <summary>Admits this write command to every one of <paramref name="ranges"/>; false: <see cref="Deferred"/>.</summary>
    public bool TryBeginWrite(CompareAndWriteGate gate, scoped ReadOnlySpan<BlockRange> ranges)
    {
        if (Submitter!.TryBeginWrite(Tag, gate, ranges)) return true;
        Deferred = true;
        return false;
    }

    /// <summary>COMPARE AND WRITE of <paramref name="range"/> with this command's Data-Out buffer.</summary>
    public void SubmitCompareAndWrite(CompareAndWriteGate gate, BlockRange range, uint blockSize, BlockRequestFlags writeFlags)
    {
        Submitted++;
        Operation = BlockOperation.Read;
        Submitter!.SubmitCompareAndWrite(Tag, Channel!, gate, range, blockSize, DataOut, DataOutCount, writeFlags);
    }

    /// <summary>Cuts an iovec run to exactly <paramref name="bytes"/> (which must not exceed its total); returns
    /// the number of iovecs left.</summary>
    public static int Trim(IoVec* iov, int count, ulong bytes)
    {
        ulong left = bytes;
        for (int i = 0; i < count; i++)
        {
            if (left == 0) return i;
            if ((ulong)iov[i].Length >= left)
            {
                iov[i].Length = (nuint)left;
                return i + 1;
            }
            left -= iov[i].Length;
        }
        return count;
    }
}
