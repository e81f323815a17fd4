using System.Diagnostics;
using System.Runtime.InteropServices;
using BlkTarget.Storage.Image;
using BlkTarget.Storage.Tests.Conformance;
using Xunit.Abstractions;

namespace BlkTarget.Storage.Tests.Concurrency;

/// <summary>
/// Several channels of one backend on several threads (the way several reactors serve the queues of one disk)
/// write, read, discard, write zeroes and flush overlapping clusters at once. Every read, during the run and of
/// the whole disk afterwards, must return what the ledger allows (never stale data a later acknowledged operation
/// replaced, never another block's data), and an image must pass `check` cleanly afterwards.
/// </summary>
public sealed unsafe class ConcurrentChannelsTests(ITestOutputHelper output) : IDisposable
{
    private const int Threads = 4;
    private const int Depth = 8;
    private const int MaxBlocks = 8;
    private const int BlockSize = 4096;
    private readonly BackendFactory _factory = new();

    public static TheoryData<string> Kinds => ["image-direct", "image-4k-clusters", "image-writeback", "file-direct"];

    [Theory]
    [MemberData(nameof(Kinds))]
    public void Overlapping_operations_from_several_channels_never_lose_or_misplace_acknowledged_data(string kind)
    {
        var device = _factory.Create(kind, blockSize: BlockSize);
        string? imagePath = (device as ImageDisk)?.Image.Path;
        int sectors = (int)(device.Info.SizeBytes / StampLedger.SectorSize);
        var ledger = new StampLedger(sectors);
        // A small hot area: operations from different threads keep meeting on the same clusters.
        int hotBlocks = Math.Min((int)(device.Info.SizeBytes / BlockSize), 512);
        var failures = new List<string>();
        var workers = Enumerable.Range(0, Threads).Select(t => new Thread(() =>
        {
            try
            {
                new Worker(device, ledger, hotBlocks, seed: 1000 * t + kind.Length).Run(TimeSpan.FromSeconds(3));
            }
            catch (Exception e)
            {
                lock (failures) failures.Add(e.ToString());
            }
        })).ToList();
        workers.ForEach(w => w.Start());
        workers.ForEach(w => w.Join());
        Assert.Empty(failures);

        // Everything acknowledged, now read it all back through a fresh channel.
        using (var driver = new ChannelDriver(device))
        {
            Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.Flush, 0, 0));
            var all = new byte[hotBlocks * BlockSize];
            long submitted = ledger.Tick();
            Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, 0, all));
            ledger.RecordRead(all, 0, submitted, ledger.Tick());
        }
        device.Dispose();
        var violations = ledger.Violations();
        output.WriteLine($"{kind}: {ledger.ReadCount} sector reads checked, {violations.Count} violations");
        Assert.True(violations.Count == 0, string.Join("\n", violations));
        if (imagePath is not null)
        {
            var check = ImageChecker.Check(imagePath);
            Assert.True(check.Clean, $"check: {string.Join("; ", check.Remaining.Select(p => p.Message))}");
        }
    }

    /// <summary>One thread acting as a reactor: its own I/O context and channel, up to <see cref="Depth"/> requests in flight.</summary>
    private sealed class Worker : IBlockCompletionSink
    {
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
        }

        private readonly IBlockDevice _device;
        private readonly StampLedger _ledger;
        private readonly int _hotBlocks;
        private readonly Random _random;
        private readonly Slot[] _slots = new Slot[Depth];
        private readonly Queue<(int Slot, BlockStatus Status)> _completed = new();

        public Worker(IBlockDevice device, StampLedger ledger, int hotBlocks, int seed)
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
            // Data in two iovecs split at a block boundary when there are several blocks.
            int split = blocks > 1 ? _random.Next(1, blocks) * BlockSize : blocks * BlockSize;
            slot.Iov[0] = new IoVec(slot.Buffer, (nuint)split);
            slot.Iov[1] = new IoVec(slot.Buffer + split, (nuint)(blocks * BlockSize - split));
            bool data = slot.Operation is BlockOperation.Read or BlockOperation.Write;
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
                    _ledger.RecordSet(slot.OpId, slot.FirstSector, slot.Sectors, slot.Submitted, completed);
                    break;
            }
        }
    }

    public void Dispose() => _factory.Dispose();
}
