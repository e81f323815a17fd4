using System.Diagnostics;
using System.Runtime.InteropServices;

namespace BlkTarget.Storage.Tests.Concurrency;

/// <summary>One thread acting as a reactor: its own I/O context and channel, up to <see cref="Depth"/> requests in flight.</summary>
internal sealed unsafe class StampWorker : IBlockCompletionSink
{
    public const int Depth = 8;
    public const int MaxBlocks = 8;
    public const int BlockSize = 4096;

    private sealed class Slot
    {
        public BlockOperation Operation;
        public long OpId;
        public long FirstSector;
        public int Sectors;
        public long Submitted;
        public byte* Buffer;
        public IoVec* Iov;
        public bool Busy;
        public bool Fua;
    }

    private readonly IBlockDevice _device;
    private readonly StampLedger _ledger;
    private readonly int _hotBlocks;
    private readonly Random _random;
    private readonly Slot[] _slots = new Slot[Depth];
    private readonly Queue<(int Slot, BlockStatus Status)> _completed = new();

    public StampWorker(IBlockDevice device, StampLedger ledger, int hotBlocks, int seed)
    {
        _device = device;
        _ledger = ledger;
        _hotBlocks = hotBlocks;
        _random = new Random(seed);
    }

    public void Complete(ulong tag, BlockStatus status) => _completed.Enqueue(((int)tag, status));

    public void ChannelFaulted(Exception error) => throw new InvalidOperationException("channel faulted", error);

    public void Run(TimeSpan duration)
    {
        using var io = new IoContext(64);
        using var channel = _device.OpenChannel(io, this, Depth);
        for (int i = 0; i < Depth; i++)
            _slots[i] = new Slot
            {
                Buffer = (byte*)NativeMemory.AlignedAlloc(MaxBlocks * BlockSize, BlockSize),
                Iov = (IoVec*)NativeMemory.Alloc((nuint)sizeof(IoVec) * 2),
            };
        try
        {
            var clock = Stopwatch.StartNew();
            int busy = 0;
            while (clock.Elapsed < duration || busy > 0)
            {
                if (clock.Elapsed < duration)
                    for (int i = 0; i < Depth; i++)
                        if (!_slots[i].Busy)
                        {
                            busy++;
                            Start(channel, i);
                        }
                io.Poll();
                while (_completed.TryDequeue(out var done))
                {
                    Finish(done.Slot, done.Status);
                    busy--;
                }
                if (clock.Elapsed > duration + TimeSpan.FromSeconds(20)) throw new TimeoutException("requests never completed");
            }
        }
        finally
        {
            foreach (var slot in _slots)
            {
                NativeMemory.AlignedFree(slot.Buffer);
                NativeMemory.Free(slot.Iov);
            }
        }
    }

    private void Start(IBlockChannel channel, int index)
    {
        var slot = _slots[index];
        int blocks = _random.Next(1, MaxBlocks + 1);
        int first = _random.Next(0, _hotBlocks - blocks + 1);
        slot.Busy = true;
        slot.OpId = _ledger.NewOpId();
        slot.FirstSector = (long)first * BlockSize / StampLedger.SectorSize;
        slot.Sectors = blocks * BlockSize / StampLedger.SectorSize;
        int dice = _random.Next(100);
        slot.Operation = dice switch
        {
            < 45 => BlockOperation.Write,
            < 75 => BlockOperation.Read,
            < 85 => BlockOperation.Discard,
            < 95 => BlockOperation.WriteZeroes,
            _ => BlockOperation.Flush,
        };
        var flags = BlockRequestFlags.None;
        if (slot.Operation == BlockOperation.Write)
        {
            StampLedger.Fill(new Span<byte>(slot.Buffer, blocks * BlockSize), slot.OpId, slot.FirstSector);
            if (_random.Next(4) == 0) flags |= BlockRequestFlags.Fua;
        }
        if (slot.Operation is BlockOperation.Discard or BlockOperation.WriteZeroes) _ledger.MarkZeroing(slot.OpId);
        if (slot.Operation == BlockOperation.WriteZeroes && _random.Next(2) == 0) flags |= BlockRequestFlags.Unmap;
        if (slot.Operation == BlockOperation.WriteZeroes && _random.Next(4) == 0) flags |= BlockRequestFlags.Fua;   // write cache off
        // Data in two iovecs split at a block boundary when there are several blocks.
        int split = blocks > 1 ? _random.Next(1, blocks) * BlockSize : blocks * BlockSize;
        slot.Iov[0] = new IoVec(slot.Buffer, (nuint)split);
        slot.Iov[1] = new IoVec(slot.Buffer + split, (nuint)(blocks * BlockSize - split));
        bool data = slot.Operation is BlockOperation.Read or BlockOperation.Write;
        slot.Fua = (flags & BlockRequestFlags.Fua) != 0;
        slot.Submitted = _ledger.Tick();
        channel.Submit(new BlockRequest
        {
            Operation = slot.Operation,
            Flags = flags,
            Offset = slot.Operation == BlockOperation.Flush ? 0 : (ulong)first * BlockSize,
            Length = slot.Operation == BlockOperation.Flush ? 0 : (ulong)blocks * BlockSize,
            Iov = data ? slot.Iov : null,
            IovCount = data ? (blocks > 1 ? 2 : 1) : 0,
            Tag = (ulong)index,
        });
    }

    private void Finish(int index, BlockStatus status)
    {
        var slot = _slots[index];
        long completed = _ledger.Tick();
        slot.Busy = false;
        if (status != BlockStatus.Ok) throw new InvalidOperationException($"{slot.Operation} of {slot.Sectors} sectors at sector {slot.FirstSector} failed: {status}");
        switch (slot.Operation)
        {
            case BlockOperation.Read:
                _ledger.RecordRead(new ReadOnlySpan<byte>(slot.Buffer, slot.Sectors * StampLedger.SectorSize), slot.FirstSector, slot.Submitted, completed);
                break;
            case BlockOperation.Write:
            case BlockOperation.Discard:
            case BlockOperation.WriteZeroes:
                _ledger.RecordSet(slot.OpId, slot.FirstSector, slot.Sectors, slot.Submitted, completed, slot.Fua);
                break;
            case BlockOperation.Flush:
                _ledger.RecordFlush(slot.Submitted, completed);
                break;
        }
    }
}
