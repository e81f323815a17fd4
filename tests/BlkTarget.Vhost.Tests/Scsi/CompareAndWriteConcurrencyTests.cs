using System.Buffers.Binary;
using BlkTarget.Storage;
using BlkTarget.Storage.Ram;
using BlkTarget.Vhost.Scsi;

namespace BlkTarget.Vhost.Tests.Scsi;

/// <summary>
/// COMPARE AND WRITE's atomicity under real concurrency: two exports of one RAM disk, each request queue polled by its
/// own thread (as two reactors would), racing on one counter block. Every block holds one 64-bit value repeated.
/// </summary>
public sealed class CompareAndWriteConcurrencyTests : IDisposable
{
    private const ulong Counter = 64;
    private readonly SlowCompletionDisk _disk = new(1 << 20);
    private readonly ScsiHarness _a, _b;

    public CompareAndWriteConcurrencyTests()
    {
        var lu = new SharedLogicalUnit("shared");
        _a = new ScsiHarness(_ => [new ScsiLunDefinition(0, 0, _disk, "C", Shared: lu)], name: "export-a");
        _b = new ScsiHarness(_ => [new ScsiLunDefinition(0, 0, _disk, "C", Shared: lu)], name: "export-b");
        _a.Patience = _b.Patience = TimeSpan.FromSeconds(10);
    }

    /// <summary>Runs <paramref name="work"/> on a second thread; its failure fails the test.</summary>
    private static Thread Background(Action work, List<Exception> failures)
    {
        var t = new Thread(() =>
        {
            try
            {
                work();
            }
            catch (Exception e)
            {
                lock (failures) failures.Add(e);
            }
        });
        t.Start();
        return t;
    }

    public void Dispose()
    {
        _a.Dispose();
        _b.Dispose();
        _disk.Dispose();
    }

    private static byte[] Block(ulong value)
    {
        var b = new byte[512];
        for (int i = 0; i < 512; i += 8) BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(i), value);
        return b;
    }

    private static ulong ReadValue(ScsiHarness h)
    {
        var r = h.Run(Cdbs.Rw10(ScsiOp.Read10, (uint)Counter, 1), dataIn: 512);
        r.AssertGood();
        return BinaryPrimitives.ReadUInt64LittleEndian(r.Data);
    }

    /// <summary>Reads the counter and compares-and-writes it one higher until that succeeds; returns the value it
    /// replaced.</summary>
    private static ulong Increment(ScsiHarness h)
    {
        while (true)
        {
            ulong v = ReadValue(h);
            var r = h.Run(CompareAndWriteTests.Caw(Counter, 1), dataOut: [.. Block(v), .. Block(v + 1)]);
            if (r.IsGood) return v;
            Assert.Equal(0x0E, r.Key);                                                // MISCOMPARE: someone was faster
        }
    }

    [Fact]
    public void Compare_and_writes_racing_on_two_exports_never_lose_an_increment()
    {
        const int perThread = 1500;
        _a.Run(Cdbs.Rw10(ScsiOp.Write10, (uint)Counter, 1), dataOut: Block(0)).AssertGood();
        var start = new Barrier(2);
        void Worker(ScsiHarness h)
        {
            start.SignalAndWait();
            for (int i = 0; i < perThread; i++) Increment(h);
        }
        var failures = new List<Exception>();
        var t = Background(() => Worker(_b), failures);
        Worker(_a);
        t.Join();
        Assert.Empty(failures);
        Assert.Equal(2UL * perThread, ReadValue(_a));
    }

    [Fact]
    public void A_write_that_completed_is_never_undone_by_a_compare_and_write_that_compared_before_it()
    {
        // Export B writes marker k << 32 over the counter (two blocks, one overlapping) and reads it back; export A
        // keeps incrementing whatever it finds. Atomic, every read-back is the marker or increments of it; a compare
        // and write whose read came before the write and its write after it would put back a value below the marker.
        const int markers = 1500;
        _a.Run(Cdbs.Rw10(ScsiOp.Write10, (uint)Counter, 1), dataOut: Block(0)).AssertGood();
        using var stop = new CancellationTokenSource();
        long increments = 0;
        var failures = new List<Exception>();
        var incrementer = Background(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                Increment(_a);
                increments++;
            }
        }, failures);
        var undone = new List<(ulong Marker, ulong Seen)>();
        try
        {
            for (ulong k = 1; k <= markers; k++)
            {
                ulong marker = k << 32;
                _b.Run(Cdbs.Rw10(ScsiOp.Write10, (uint)Counter, 2), dataOut: [.. Block(marker), .. Block(marker)]).AssertGood();
                ulong seen = ReadValue(_b);
                if (seen < marker) undone.Add((marker, seen));
            }
        }
        finally
        {
            stop.Cancel();
            incrementer.Join();
        }
        Assert.Empty(failures);
        Assert.True(increments > 0);
        Assert.Empty(undone);
    }

    /// <summary>A RAM disk that spins a few microseconds after moving the data and before reporting completion, like
    /// a device with latency: it widens the window between a COMPARE AND WRITE's read and its write, so that a race
    /// the gate did not prevent shows in a run of this length.</summary>
    private sealed class SlowCompletionDisk(ulong size) : IBlockDevice
    {
        private readonly RamDisk _inner = new(size);

        public BlockDeviceInfo Info => _inner.Info;

        public IBlockChannel OpenChannel(IoContext io, IBlockCompletionSink sink, int maxInFlight) =>
            _inner.OpenChannel(io, new Sink(sink), maxInFlight);

        public void Dispose() => _inner.Dispose();

        private sealed class Sink(IBlockCompletionSink inner) : IBlockCompletionSink
        {
            public void Complete(ulong tag, BlockStatus status)
            {
                Thread.SpinWait(2000);
                inner.Complete(tag, status);
            }

            public void ChannelFaulted(Exception error) => inner.ChannelFaulted(error);
        }
    }
}
