using BlkTarget.Storage;
using BlkTarget.Storage.Interop;
using BlkTarget.Vhost.Scsi.Atomicity;

namespace BlkTarget.Vhost.Scsi;

/// <summary>What a <see cref="CompareAndWriteRunner"/> needs from its request queue.</summary>
internal interface ICompareAndWriteHost
{
    /// <summary>Submits a backend request of command <paramref name="tag"/> (counted until it completes).</summary>
    void Submit(ushort tag, IBlockChannel channel, in BlockRequest request);

    /// <summary>The COMPARE AND WRITE in <paramref name="tag"/> is over: GOOD, or <paramref name="failure"/> unless
    /// the command already failed (a backend error); drops the hold <see cref="CompareAndWriteRunner.Start"/> took.</summary>
    void Finish(ushort tag, SenseCode failure);
}

/// <summary>
/// Runs the COMPARE AND WRITE commands (SBC-3 5.2) of one request queue, each as a series of steps driven by the
/// queue's polls and backend completions, never blocking the reactor: hold the range in the disk's
/// <see cref="CompareAndWriteGate"/> (waiting while an overlapping COMPARE AND WRITE holds it), wait for the writes
/// already in flight to it (<see cref="WriteDrain"/>), read it into the queue's compare buffer, compare with the
/// verify half of the Data-Out buffer, and on a match write the other half straight from guest memory; release the
/// range. One compare buffer per queue (<see cref="BufferBytes"/>, page aligned for O_DIRECT, committed only when
/// used): a second COMPARE AND WRITE on the same queue waits for it. Nothing is allocated per command.
/// </summary>
internal sealed unsafe class CompareAndWriteRunner : IDisposable
{
    /// <summary>Bytes of the compare buffer: the largest NUMBER OF LOGICAL BLOCKS times the block size
    /// (<see cref="ScsiLimits.MaxCompareAndWriteBlocks"/>).</summary>
    public const int BufferBytes = 64 << 10;

    private enum Phase : byte { None, Hold, Drain, Read, Write }

    private struct Command
    {
        public Phase Phase;
        public CompareAndWriteGate Gate;
        public IBlockChannel Channel;
        public BlockRange Range;
        public uint BlockSize;
        public BlockRequestFlags WriteFlags;
        /// <summary>The Data-Out buffer: verify data, then write data, exactly 2 x range x block size.</summary>
        public IoVec* DataOut;
        public int DataOutCount;
        public int Holder;
        public WriteDrain Drain;
    }

    private readonly ICompareAndWriteHost _host;
    private readonly Command[] _commands;
    /// <summary>Commands waiting for the buffer, the gate or the drain, in arrival order.</summary>
    private readonly ushort[] _waiting;
    private int _waitingCount;
    private readonly MappedMemory _buffer;
    private readonly IoVec* _bufferIov;
    /// <summary>The command whose read uses the buffer, -1 when free.</summary>
    private int _bufferOwner = -1;

    public CompareAndWriteRunner(ICompareAndWriteHost host, int slots)
    {
        _host = host;
        _commands = new Command[slots];
        _waiting = new ushort[slots];
        _buffer = MappedMemory.MapAnonymous(BufferBytes + MappedMemory.PageSize);
        _bufferIov = (IoVec*)(_buffer.Pointer + BufferBytes);
    }

    /// <summary>Whether commands wait for a poll to make progress.</summary>
    public bool Waiting => _waitingCount > 0;

    /// <summary>Whether command <paramref name="tag"/> is a COMPARE AND WRITE this runner runs.</summary>
    public bool Runs(ushort tag) => _commands[tag].Phase != Phase.None;

    /// <summary>
    /// Starts the COMPARE AND WRITE of <paramref name="range"/> (NUMBER OF LOGICAL BLOCKS 1..
    /// <see cref="BufferBytes"/> / <paramref name="blockSize"/>, already checked against capacity) whose Data-Out
    /// buffer <paramref name="dataOut"/> holds exactly twice the range's bytes. The host holds the command open
    /// until <see cref="ICompareAndWriteHost.Finish"/>.
    /// </summary>
    public void Start(ushort tag, CompareAndWriteGate gate, IBlockChannel channel, BlockRange range, uint blockSize,
        IoVec* dataOut, int dataOutCount, BlockRequestFlags writeFlags)
    {
        _commands[tag] = new Command
        {
            Phase = Phase.Hold, Gate = gate, Channel = channel, Range = range, BlockSize = blockSize, WriteFlags = writeFlags,
            DataOut = dataOut, DataOutCount = dataOutCount, Holder = -1,
        };
        if (!Advance(tag)) _waiting[_waitingCount++] = tag;
    }

    /// <summary>Moves the waiting commands on (in arrival order); returns how many reached their read.</summary>
    public int Poll()
    {
        // Nothing starts a command while this runs (Start comes from command execution, not from completions).
        int done = 0, kept = 0;
        for (int i = 0; i < _waitingCount; i++)
        {
            ushort tag = _waiting[i];
            if (Advance(tag)) done++;
            else _waiting[kept++] = tag;
        }
        _waitingCount = kept;
        return done;
    }

    /// <summary>Hold, drain, read. False while it must wait; true once the read is submitted (the command may even
    /// have finished by then, on a backend that completes inside Submit: nothing of it is touched afterwards).</summary>
    private bool Advance(ushort tag)
    {
        ref Command c = ref _commands[tag];
        if (c.Phase == Phase.Hold)
        {
            if (_bufferOwner >= 0) return false;
            c.Holder = c.Gate.TryHold(c.Range.Lba, c.Range.Blocks);
            if (c.Holder < 0) return false;
            _bufferOwner = tag;
            c.Drain.Begin(c.Gate);
            c.Phase = Phase.Drain;
        }
        if (!c.Drain.Finished()) return false;
        c.Phase = Phase.Read;
        ulong bytes = c.Range.Blocks * c.BlockSize;
        *_bufferIov = new IoVec(_buffer.Pointer, (nuint)bytes);
        _host.Submit(tag, c.Channel, new BlockRequest
        {
            Operation = BlockOperation.Read,
            Offset = c.Range.Lba * c.BlockSize,
            Length = bytes,
            Iov = _bufferIov,
            IovCount = 1,
            Tag = tag,
        });
        return true;
    }

    /// <summary>A backend request of command <paramref name="tag"/> completed (<see cref="Runs"/> was true): after
    /// the read, compare and write or finish with MISCOMPARE; after the write, finish. A failed request finishes it
    /// (the host already recorded the MEDIUM ERROR).</summary>
    public void Completed(ushort tag, BlockStatus status)
    {
        ref Command c = ref _commands[tag];
        if (c.Phase == Phase.Read && status == BlockStatus.Ok)
        {
            long difference = FirstDifference(ref c);
            _bufferOwner = -1;
            if (difference < 0)
            {
                c.Phase = Phase.Write;
                SubmitWrite(tag, ref c);
                return;
            }
            End(tag, ref c);
            _host.Finish(tag, SenseCode.MiscompareDuringVerify with { Information = (uint)difference });
            return;
        }
        End(tag, ref c);
        _host.Finish(tag, SenseCode.None);
    }

    /// <summary>Offset in the Data-Out buffer of the first verify byte that differs from the medium's, -1 for none
    /// (SBC-3 5.2: the INFORMATION field of the MISCOMPARE sense).</summary>
    private long FirstDifference(ref Command c)
    {
        ulong length = c.Range.Blocks * c.BlockSize;
        ulong at = 0;
        for (int i = 0; i < c.DataOutCount && at < length; i++)
        {
            int n = (int)Math.Min((ulong)c.DataOut[i].Length, length - at);
            var verify = new ReadOnlySpan<byte>(c.DataOut[i].Base, n);
            int same = verify.CommonPrefixLength(new ReadOnlySpan<byte>(_buffer.Pointer + at, n));
            if (same < n) return (long)at + same;
            at += (ulong)n;
        }
        return -1;
    }

    /// <summary>Writes the second half of the Data-Out buffer over the range: its iovecs are cut in place where the
    /// verify data ends (nothing reads them afterwards).</summary>
    private void SubmitWrite(ushort tag, ref Command c)
    {
        ulong half = c.Range.Blocks * c.BlockSize;
        ulong skip = half;
        int first = 0;
        while (skip >= c.DataOut[first].Length)
        {
            skip -= c.DataOut[first].Length;
            first++;
        }
        IoVec* iov = c.DataOut + first;
        iov->Base += skip;
        iov->Length -= (nuint)skip;
        int count = ScsiTask.Trim(iov, c.DataOutCount - first, half);
        _host.Submit(tag, c.Channel, new BlockRequest
        {
            Operation = BlockOperation.Write,
            Flags = c.WriteFlags,
            Offset = c.Range.Lba * c.BlockSize,
            Length = half,
            Iov = iov,
            IovCount = count,
            Tag = tag,
        });
    }

    private void End(ushort tag, ref Command c)
    {
        if (c.Holder >= 0) c.Gate.Release(c.Holder);
        if (_bufferOwner == tag) _bufferOwner = -1;
        c = default;
    }

    /// <summary>The queue gave up command <paramref name="tag"/> (faulted or stopped; its backend holds nothing
    /// any more): its range and the buffer are released, it is not polled again.</summary>
    public void Abandon(ushort tag)
    {
        ref Command c = ref _commands[tag];
        if (c.Phase == Phase.None) return;
        End(tag, ref c);
        int kept = 0;
        for (int i = 0; i < _waitingCount; i++)
            if (_waiting[i] != tag) _waiting[kept++] = _waiting[i];
        _waitingCount = kept;
    }

    public void Dispose() => _buffer.Dispose();
}
