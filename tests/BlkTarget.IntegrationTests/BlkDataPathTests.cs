using System.Text;
using BlkTarget.Vhost.Frontend;
using BlkTarget.Vhost.Protocol;
using BlkTarget.Vhost.Queues;
using Xunit.Abstractions;
using static BlkTarget.IntegrationTests.TestData;

namespace BlkTarget.IntegrationTests;

/// <summary>virtio-blk requests from a real frontend over a real socket, with the data checked byte for byte.</summary>
public sealed class BlkDataPathTests(ITestOutputHelper output)
{
    private const ulong DiskBytes = 16 << 20;

    private TestTarget Target(uint blockSize = 512, string serial = "blkt-integration") =>
        new(output, new TargetSpec { BlockSize = blockSize, SizeBytes = DiskBytes, Serial = serial });

    [Theory]
    [InlineData(512u, true)]
    [InlineData(512u, false)]
    [InlineData(4096u, true)]
    [InlineData(4096u, false)]
    [InlineData(512u, true, true)]
    [InlineData(4096u, false, true)]
    public void WrittenDataReadsBackAtSeveralOffsetsAndSizes(uint blockSize, bool eventIdx, bool packed = false)
    {
        using var target = Target(blockSize);
        using var guest = TestGuest.Connect(target.SocketPath, options: new VhostUserFrontendOptions { EventIdx = eventIdx }, packed: packed);
        Assert.Equal(packed, guest.Frontend.HasFeature(VirtioFeatures.RingPacked));
        Assert.Equal(eventIdx, guest.Queues[0].EventIdx);
        var blk = guest.Blk[0];
        // Non-overlapping (offset, length) pairs in bytes, including the first and the last block of the disk.
        (ulong Offset, uint Length)[] extents =
        [
            (0, blockSize),
            (blockSize * 3, blockSize * 2),
            (1 << 20, 64 << 10),
            (3 << 20, 1 << 20),
            (DiskBytes - blockSize * 4, blockSize * 3),
            (DiskBytes - blockSize, blockSize),
        ];
        for (int i = 0; i < extents.Length; i++)
        {
            var data = guest.Allocate(extents[i].Length);
            Fill(data.Span, seed: i);
            Assert.Equal(Ok, blk.Execute(BlkRequestType.Out, extents[i].Offset / 512, [data]).Status);
        }
        for (int i = 0; i < extents.Length; i++)
        {
            var back = guest.Allocate(extents[i].Length);
            var completion = blk.Execute(BlkRequestType.In, extents[i].Offset / 512, [back]);
            Assert.Equal(Ok, completion.Status);
            Assert.Equal(extents[i].Length + 1, completion.UsedLength);
            Assert.Equal(Random((int)extents[i].Length, seed: i), back.Span.ToArray());
        }
        // Something never written reads as zeros.
        var untouched = guest.Allocate(8192);
        untouched.Span.Fill(0xcc);
        Assert.Equal(Ok, blk.Execute(BlkRequestType.In, (8 << 20) / 512, [untouched]).Status);
        Assert.True(AllZero(untouched.Span));
    }

    [Theory]
    [InlineData(512u)]
    [InlineData(4096u)]
    public void MultiSegmentRequestsGatherAndScatterInOrder(uint blockSize)
    {
        using var target = Target(blockSize);
        using var guest = TestGuest.Connect(target.SocketPath);
        var blk = guest.Blk[0];
        const uint total = 5 * 4096;
        var source = guest.Allocate(total);
        Fill(source.Span, seed: 42);
        // Odd-sized pieces: the backend must keep their order and boundaries.
        var writePieces = Split(source, 100, 412, 3584, 1, 4095, 8192, 4096);
        Assert.Equal(Ok, blk.Execute(BlkRequestType.Out, 64, writePieces).Status);

        var destination = guest.Allocate(total);
        var readPieces = Split(destination, 7, 9000, 2048, 2048, 7376, 1);
        var completion = blk.Execute(BlkRequestType.In, 64, readPieces);
        Assert.Equal(Ok, completion.Status);
        Assert.Equal(total + 1, completion.UsedLength);
        Assert.Equal(source.Span.ToArray(), destination.Span.ToArray());
    }

    [Theory]
    [InlineData(512u)]
    [InlineData(4096u)]
    [InlineData(4096u, true)]
    public void IndirectDescriptorRequestsRoundTrip(uint blockSize, bool packed = false)
    {
        using var target = Target(blockSize);
        using var guest = TestGuest.Connect(target.SocketPath, maxIndirect: 64, packed: packed);
        Assert.True(guest.Frontend.HasFeature(28));
        var blk = guest.Blk[0];
        int freeBefore = guest.Queues[0].FreeDescriptors;
        var source = guest.Allocate(32 * 4096);
        Fill(source.Span, seed: 7);
        var pieces = Enumerable.Range(0, 32).Select(i => source.Slice((uint)i * 4096, 4096)).ToArray();
        Assert.Equal(Ok, blk.Execute(BlkRequestType.Out, 2048, pieces, indirect: true).Status);

        var destination = guest.Allocate(32 * 4096);
        var readPieces = Enumerable.Range(0, 60).Select(i => destination.Slice((uint)(i * 2048), i == 59 ? 131072 - 59 * 2048 : 2048u)).ToArray();
        var completion = blk.Execute(BlkRequestType.In, 2048, readPieces, indirect: true);
        Assert.Equal(Ok, completion.Status);
        Assert.Equal(32u * 4096 + 1, completion.UsedLength);
        Assert.Equal(source.Span.ToArray(), destination.Span.ToArray());
        Assert.Equal(freeBefore, guest.Queues[0].FreeDescriptors);

        // Mixed: written indirect, read back direct.
        var direct = guest.Allocate(32 * 4096);
        Assert.Equal(Ok, blk.Execute(BlkRequestType.In, 2048, [direct]).Status);
        Assert.Equal(source.Span.ToArray(), direct.Span.ToArray());
    }

    [Fact]
    public void BufferCrossingAMemoryRegionBoundaryRoundTrips()
    {
        using var target = Target();
        const ulong regionBytes = 4 << 20;
        using var guest = TestGuest.Connect(target.SocketPath, arenaBytes: 2 * regionBytes, regions: 2);
        Assert.Equal(2, guest.Arena.Regions.Length);
        Assert.True(guest.Arena.Allocated < regionBytes - 8192, "the rings must not reach the buffer placed at the boundary");
        var straddling = guest.Arena.At(regionBytes - 3072, 8192);
        Fill(straddling.Span, seed: 11);
        var expected = straddling.Span.ToArray();
        var blk = guest.Blk[0];
        Assert.Equal(Ok, blk.Execute(BlkRequestType.Out, 100, [straddling]).Status);
        straddling.Span.Clear();
        var completion = blk.Execute(BlkRequestType.In, 100, [straddling]);
        Assert.Equal(Ok, completion.Status);
        Assert.Equal(expected, straddling.Span.ToArray());
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void PipelinedRequestsCompleteWithTheirOwnTokensAndData(bool packed)
    {
        using var target = Target();
        using var guest = TestGuest.Connect(target.SocketPath, queueSize: 64, maxIndirect: 8, packed: packed);
        var blk = guest.Blk[0];
        const int blocks = 256;
        const uint size = 4096;
        var buffers = Enumerable.Range(0, blocks).Select(_ => guest.Allocate(size)).ToArray();
        for (int i = 0; i < blocks; i++) Fill(buffers[i].Span, seed: 1000 + i);

        RunAll(blk, blocks, i => (BlkRequestType.Out, (ulong)i * 8, buffers[i], i % 2 == 0));
        foreach (var b in buffers) b.Span.Clear();
        RunAll(blk, blocks, i => (BlkRequestType.In, (ulong)i * 8, buffers[i], i % 3 == 0));
        for (int i = 0; i < blocks; i++) Assert.Equal(Random((int)size, seed: 1000 + i), buffers[i].Span.ToArray());
        Assert.Equal(guest.Queues[0].Size, guest.Queues[0].FreeDescriptors);
    }

    /// <summary>Keeps the queue as full as it gets until every request has completed OK exactly once.</summary>
    private static void RunAll(BlkRequestQueue blk, int count, Func<int, (BlkRequestType Type, ulong Sector, GuestBuffer Data, bool Indirect)> request)
    {
        var done = new bool[count];
        int next = 0, completed = 0;
        Span<BlkCompletion> completions = stackalloc BlkCompletion[32];
        while (completed < count)
        {
            while (next < count)
            {
                var r = request(next);
                if (!blk.TrySubmit(r.Type, r.Sector, [r.Data], (ulong)next, r.Indirect)) break;
                next++;
            }
            blk.Kick();
            Assert.True(blk.Queue.WaitForUsed(10_000), "no completion within 10 s");
            int n = blk.Poll(completions);
            for (int i = 0; i < n; i++)
            {
                Assert.Equal(Ok, completions[i].Status);
                Assert.False(done[completions[i].Token], $"request {completions[i].Token} completed twice");
                done[completions[i].Token] = true;
            }
            completed += n;
        }
    }

    /// <summary>
    /// Steady-state reads and writes on both queues of a RAM disk allocate nothing on the reactor threads, which run
    /// the data path (ring, request parsing, backend, completion): measured on those threads, after warm-up, from
    /// sleep to sleep. Our frontend driver, the load generator's loop, allocates nothing on the test thread either.
    /// </summary>
    [Fact]
    public void SteadyStateReadsAndWritesAllocateNothingOnTheReactorsOrInTheDriver()
    {
        using var target = Target();
        var reactors = target.Reactors.Reactors;
        Assert.Equal(2, reactors.Count);
        using var guest = TestGuest.Connect(target.SocketPath, queues: 2, queueSize: 32, maxIndirect: 4);
        var buffers = Enumerable.Range(0, 16).Select(_ => guest.Allocate(4096)).ToArray();
        Span<BlkCompletion> completions = stackalloc BlkCompletion[8];

        void Round(Span<BlkCompletion> done)
        {
            for (int q = 0; q < 2; q++)
            {
                var blk = guest.Blk[q];
                for (int i = 0; i < 8; i++)
                    Assert.True(blk.TrySubmit(i % 2 == 0 ? BlkRequestType.In : BlkRequestType.Out, (ulong)(q * 8 + i) * 8, [buffers[q * 8 + i]], (ulong)i,
                        indirect: i % 4 == 0));
                blk.Kick();
            }
            for (int q = 0; q < 2; q++)
            {
                var blk = guest.Blk[q];
                int completed = 0;
                while (completed < 8)
                {
                    if (!blk.Queue.WaitForUsed(5000)) throw new TimeoutException();
                    completed += blk.Poll(done);
                }
            }
        }

        // What each reactor had allocated when it last went to sleep: nothing runs on it until the next kick.
        long[] AllocatedWhenAsleep()
        {
            long deadline = Environment.TickCount64 + 5000;
            while (!reactors.All(r => r.IsSleeping))
            {
                if (Environment.TickCount64 > deadline) throw new TimeoutException("the reactors did not go to sleep");
                Thread.Sleep(1);
            }
            return reactors.Select(r => r.AllocatedBytes).ToArray();
        }

        for (int i = 0; i < 500; i++) Round(completions);   // warm-up (JIT, tiering, first-use statics)
        var reactorsBefore = AllocatedWhenAsleep();
        long driverBefore = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 2000; i++) Round(completions);
        long driverAllocated = GC.GetAllocatedBytesForCurrentThread() - driverBefore;
        var reactorsAfter = AllocatedWhenAsleep();
        for (int r = 0; r < reactors.Count; r++)
            Assert.True(reactorsAfter[r] == reactorsBefore[r], $"reactor {r} allocated {reactorsAfter[r] - reactorsBefore[r]} bytes during 16000 requests");
        Assert.Equal(0, driverAllocated);
        // ... while every one of those requests was counted (statistics are part of that data path).
        var counted = target.Device.Context.Counters.Select(BlkTarget.Vhost.Stats.CounterSnapshot.Read).ToList();
        Assert.All(counted, c => Assert.Equal(2500 * 4, c.Ops(BlkTarget.Vhost.Stats.IoOp.Read)));
        Assert.All(counted, c => Assert.Equal(2500 * 4, c.Ops(BlkTarget.Vhost.Stats.IoOp.Write)));
    }

    [Fact]
    public void FlushCompletesWithOk()
    {
        using var target = Target();
        using var guest = TestGuest.Connect(target.SocketPath);
        Assert.True(guest.Frontend.HasFeature(9));
        var completion = guest.Blk[0].Execute(BlkRequestType.Flush, 0, []);
        Assert.Equal(Ok, completion.Status);
        Assert.Equal(1u, completion.UsedLength);
    }

    [Theory]
    [InlineData("blkt-integration")]
    [InlineData("ABCDEFGHIJKLMNOPQRST")]
    [InlineData("0123456789abcdefghijKLMNO")]
    public void GetIdReturnsTheConfiguredSerial(string serial)
    {
        using var target = Target(serial: serial);
        using var guest = TestGuest.Connect(target.SocketPath);
        var id = guest.Allocate(20);
        id.Span.Clear();
        var completion = guest.Blk[0].Execute(BlkRequestType.GetId, 0, [id]);
        Assert.Equal(Ok, completion.Status);
        var expected = new byte[20];
        var bytes = Encoding.ASCII.GetBytes(serial);
        bytes.AsSpan(0, Math.Min(20, bytes.Length)).CopyTo(expected);
        Assert.Equal(expected, id.Span.ToArray());
        Assert.Equal(21u, completion.UsedLength);   // the whole NUL-padded field, then the status byte
    }

    [Theory]
    [InlineData(512u)]
    [InlineData(4096u)]
    public void DiscardedRangesReadBackAsZeros(uint blockSize)
    {
        using var target = Target(blockSize);
        using var guest = TestGuest.Connect(target.SocketPath);
        Assert.True(guest.Frontend.HasFeature(13));
        var blk = guest.Blk[0];
        const uint span = 256 << 10;
        var data = guest.Allocate(span);
        Fill(data.Span, seed: 5);
        var expected = data.Span.ToArray();
        Assert.Equal(Ok, blk.Execute(BlkRequestType.Out, 0, [data]).Status);

        // Two ranges in one request: [16 KiB, 32 KiB) and [100 KiB, 164 KiB).
        var ranges = guest.Allocate(64, 16);
        uint length = BlkRequestQueue.WriteRanges(ranges.Span, [new BlkRange(32, 32), new BlkRange(200, 128)]);
        Assert.Equal(Ok, blk.Execute(BlkRequestType.Discard, 0, [ranges.Slice(0, length)]).Status);
        expected.AsSpan(16 << 10, 16 << 10).Clear();
        expected.AsSpan(100 << 10, 64 << 10).Clear();

        var back = guest.Allocate(span);
        back.Span.Fill(0xee);
        Assert.Equal(Ok, blk.Execute(BlkRequestType.In, 0, [back]).Status);
        Assert.Equal(expected, back.Span.ToArray());
    }

    [Theory]
    [InlineData(512u, false)]
    [InlineData(512u, true)]
    [InlineData(4096u, false)]
    [InlineData(4096u, true)]
    public void WriteZeroesRangesReadBackAsZeros(uint blockSize, bool unmap)
    {
        using var target = Target(blockSize);
        using var guest = TestGuest.Connect(target.SocketPath);
        Assert.True(guest.Frontend.HasFeature(14));
        var blk = guest.Blk[0];
        const uint span = 128 << 10;
        var data = guest.Allocate(span);
        Fill(data.Span, seed: 6);
        var expected = data.Span.ToArray();
        Assert.Equal(Ok, blk.Execute(BlkRequestType.Out, 1024, [data]).Status);

        var ranges = guest.Allocate(16, 16);
        BlkRequestQueue.WriteRanges(ranges.Span, [new BlkRange(1024 + 8, 24, unmap ? BlkRange.FlagUnmap : 0)]);
        Assert.Equal(Ok, blk.Execute(BlkRequestType.WriteZeroes, 0, [ranges]).Status);
        expected.AsSpan(4096, 24 * 512).Clear();

        var back = guest.Allocate(span);
        Assert.Equal(Ok, blk.Execute(BlkRequestType.In, 1024, [back]).Status);
        Assert.Equal(expected, back.Span.ToArray());
    }

    [Fact]
    public void DiscardWithUnmapFlagOrUnknownWriteZeroesFlagIsUnsupported()
    {
        using var target = Target();
        using var guest = TestGuest.Connect(target.SocketPath);
        var blk = guest.Blk[0];
        var ranges = guest.Allocate(16, 16);
        BlkRequestQueue.WriteRanges(ranges.Span, [new BlkRange(0, 8, BlkRange.FlagUnmap)]);
        Assert.Equal(Unsupp, blk.Execute(BlkRequestType.Discard, 0, [ranges]).Status);
        BlkRequestQueue.WriteRanges(ranges.Span, [new BlkRange(0, 8, 0x80)]);
        Assert.Equal(Unsupp, blk.Execute(BlkRequestType.WriteZeroes, 0, [ranges]).Status);
    }

    [Theory]
    [InlineData(512u)]
    [InlineData(4096u)]
    public void RequestsOutsideTheDeviceFailWithIoErrAndChangeNothing(uint blockSize)
    {
        using var target = Target(blockSize);
        using var guest = TestGuest.Connect(target.SocketPath);
        var blk = guest.Blk[0];
        ulong capacity = guest.Frontend.Config!.Capacity;
        Assert.Equal(DiskBytes / 512, capacity);
        var buffer = guest.Allocate(8192);
        Fill(buffer.Span, seed: 9);

        Assert.Equal(IoErr, blk.Execute(BlkRequestType.In, capacity, [buffer.Slice(0, blockSize)]).Status);
        Assert.Equal(IoErr, blk.Execute(BlkRequestType.Out, capacity, [buffer.Slice(0, blockSize)]).Status);
        // Straddling the end: starts inside, ends outside.
        Assert.Equal(IoErr, blk.Execute(BlkRequestType.Out, capacity - blockSize / 512, [buffer]).Status);
        Assert.Equal(IoErr, blk.Execute(BlkRequestType.In, ulong.MaxValue - 1, [buffer.Slice(0, blockSize)]).Status);
        var ranges = guest.Allocate(16, 16);
        BlkRequestQueue.WriteRanges(ranges.Span, [new BlkRange(capacity - 8, 16)]);
        Assert.Equal(IoErr, blk.Execute(BlkRequestType.WriteZeroes, 0, [ranges]).Status);
        Assert.Equal(IoErr, blk.Execute(BlkRequestType.Discard, 0, [ranges]).Status);

        // The last block was not touched by the straddling write.
        var last = guest.Allocate(blockSize);
        Assert.Equal(Ok, blk.Execute(BlkRequestType.In, capacity - blockSize / 512, [last]).Status);
        Assert.True(AllZero(last.Span));
    }

    [Fact]
    public void UnknownRequestTypeFailsWithUnsupp()
    {
        using var target = Target();
        using var guest = TestGuest.Connect(target.SocketPath);
        var blk = guest.Blk[0];
        var buffer = guest.Allocate(512);
        Assert.Equal(Unsupp, blk.Execute((BlkRequestType)99, 0, [buffer], dataWritable: false, indirect: false).Status);
        Assert.Equal(Unsupp, blk.Execute((BlkRequestType)99, 0, [buffer], dataWritable: true, indirect: false).Status);
        Assert.Equal(Unsupp, blk.Execute((BlkRequestType)10 /* GET_LIFETIME, not offered */, 0, [buffer], dataWritable: true, indirect: false).Status);
        // The queue goes on serving.
        Assert.Equal(Ok, blk.Execute(BlkRequestType.In, 0, [buffer]).Status);
    }

    [Theory]
    [InlineData(512u, 100u, 0ul)]
    [InlineData(512u, 513u, 0ul)]
    [InlineData(4096u, 512u, 0ul)]
    [InlineData(4096u, 4096u, 1ul)]
    [InlineData(4096u, 6144u, 8ul)]
    public void UnalignedRequestsFailWithIoErr(uint blockSize, uint length, ulong sector)
    {
        using var target = Target(blockSize);
        using var guest = TestGuest.Connect(target.SocketPath);
        var blk = guest.Blk[0];
        var buffer = guest.Allocate(8192);
        Fill(buffer.Span, seed: 3);
        Assert.Equal(IoErr, blk.Execute(BlkRequestType.Out, sector, [buffer.Slice(0, length)]).Status);
        Assert.Equal(IoErr, blk.Execute(BlkRequestType.In, sector, [buffer.Slice(0, length)]).Status);
        // Nothing was written.
        var check = guest.Allocate(8192);
        Assert.Equal(Ok, blk.Execute(BlkRequestType.In, 0, [check]).Status);
        Assert.True(AllZero(check.Span));
    }

    [Fact]
    public void HeaderDataAndStatusMayShareDescriptors()
    {
        // virtio 1.0 lets the driver lay out a request any way it likes (VIRTIO_F_ANY_LAYOUT is implied).
        using var target = Target();
        using var guest = TestGuest.Connect(target.SocketPath);
        var q = guest.SplitQueue(0);
        var write = guest.Allocate(16 + 4096, 16);
        write.Span[..16].Clear();
        write.Span[0] = (byte)BlkRequestType.Out;
        write.Span[8] = 16;                                        // sector 16
        Fill(write.Span[16..], seed: 99);
        var status = guest.Allocate(1, 1);
        Assert.True(q.TryAddRaw(
        [
            new() { Addr = write.Gpa, Len = 16 + 4096 },
            new() { Addr = status.Gpa, Len = 1, Flags = VirtqDescriptor.FlagWrite },
        ], 1, out _));
        q.Kick();
        Assert.True(q.WaitForUsed(5000));
        Assert.True(q.TryGetUsed(out _, out _));
        Assert.Equal(Ok, status.Span[0]);

        // Read with the data and the status byte in one writable buffer.
        var header = guest.Allocate(16, 16);
        header.Span.Clear();
        header.Span[8] = 16;
        var readBack = guest.Allocate(4096 + 1);
        readBack.Span[4096] = 0xff;
        Assert.True(q.TryAddRaw(
        [
            new() { Addr = header.Gpa, Len = 16 },
            new() { Addr = readBack.Gpa, Len = 4097, Flags = VirtqDescriptor.FlagWrite },
        ], 2, out _));
        q.Kick();
        Assert.True(q.WaitForUsed(5000));
        Assert.True(q.TryGetUsed(out ulong token, out uint length));
        Assert.Equal(2ul, token);
        Assert.Equal(4097u, length);
        Assert.Equal(Ok, readBack.Span[4096]);
        Assert.Equal(write.Span[16..].ToArray(), readBack.Span[..4096].ToArray());
    }

    [Fact]
    public void HeaderShorterThanSixteenBytesFailsWithIoErr()
    {
        using var target = Target();
        using var guest = TestGuest.Connect(target.SocketPath);
        var q = guest.SplitQueue(0);
        var header = guest.Allocate(16, 16);
        var status = guest.Allocate(1, 1);
        status.Span[0] = 0xff;
        Assert.True(q.TryAddRaw(
        [
            new() { Addr = header.Gpa, Len = 8 },
            new() { Addr = status.Gpa, Len = 1, Flags = VirtqDescriptor.FlagWrite },
        ], 1, out _));
        q.KickIfNeeded();
        Assert.True(q.WaitForUsed(5000));
        Assert.True(q.TryGetUsed(out ulong token, out uint length));
        Assert.Equal(1ul, token);
        Assert.Equal(1u, length);
        Assert.Equal(IoErr, status.Span[0]);
    }
}
