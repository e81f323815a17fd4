using System.Diagnostics;
using BlkTarget.Vhost.Frontend;
using BlkTarget.Vhost.Queues;
using Xunit.Abstractions;
using static BlkTarget.IntegrationTests.TestData;

namespace BlkTarget.IntegrationTests;

/// <summary>
/// A target killed with SIGKILL while requests are in flight, a new target process on the same socket and file, and a
/// frontend that reconnects the way QEMU 7.2 does (kept inflight area, rings restarted from used->idx): every request
/// completes exactly once, with the right data on the disk.
/// </summary>
public sealed unsafe class ReconnectTests(ITestOutputHelper output) : IDisposable
{
    private const ulong DiskBytes = 16 << 20;
    /// <summary>The first target holds every write at or beyond this byte: those are in flight when it dies.</summary>
    private const long HoldFrom = 8 << 20;
    private const int Queues = 2;
    private const int PerQueue = 8;

    private readonly string _socket = $"/tmp/blkt-rc-{Guid.NewGuid():N}.sock";
    private readonly string _file = Path.Combine(Path.GetTempPath(), $"blkt-rc-{Guid.NewGuid():N}.img");
    private readonly List<Process> _targets = [];

    public void Dispose()
    {
        foreach (var p in _targets)
        {
            if (!p.HasExited) p.Kill();
            p.WaitForExit();
            p.Dispose();
        }
        File.Delete(_file);
        File.Delete(_socket);
    }

    private Process StartTarget(long holdFrom)
    {
        var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { Path.Combine(AppContext.BaseDirectory, "BlkTarget.ReconnectTarget.dll"), _socket, _file, Queues.ToString(), holdFrom.ToString() })
            info.ArgumentList.Add(a);
        var process = Process.Start(info)!;
        _targets.Add(process);
        string? line = process.StandardOutput.ReadLine();
        if (line != "ready") Assert.Fail($"target did not start: {line} {process.StandardError.ReadToEnd()}");
        return process;
    }

    /// <summary>Request i of queue q: a 4 KiB write, even i below <see cref="HoldFrom"/> (completes), odd i above (held).</summary>
    private static ulong SectorOf(int q, int i) => (i % 2 == 0 ? 0UL : (ulong)HoldFrom) / 512 + (ulong)(q * PerQueue + i) * 8;

    private static int SeedOf(int q, int i) => 1000 + q * PerQueue + i;

    /// <summary>Inflight flags set in queue <paramref name="queue"/>'s region (the target's areas give every queue room for
    /// either layout).</summary>
    private static int InflightFlags(InflightArea area, int queue, int queueSize, bool packed = false)
    {
        byte* region = area.Pointer + (ulong)queue * InflightLayout.QueueRegionBytes((uint)queueSize);
        int header = packed ? InflightLayout.PackedHeaderBytes : InflightLayout.SplitHeaderBytes;
        int entry = packed ? InflightLayout.PackedDescStateBytes : InflightLayout.SplitDescStateBytes;
        int n = 0;
        for (int d = 0; d < queueSize; d++) n += region[header + d * entry];
        return n;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Killed_target_with_requests_in_flight_completes_each_exactly_once_after_reconnect(bool packed)
    {
        using (var f = File.Create(_file)) f.SetLength((long)DiskBytes);
        var first = StartTarget(HoldFrom);
        using var guest = TestGuest.Connect(_socket, queues: Queues, queueSize: 64, arenaBytes: 16 << 20, packed: packed);
        Assert.NotNull(guest.Frontend.Inflight);

        // Interleaved: held and completing requests alternate in avail order, so completions are out of order.
        var buffers = new GuestBuffer[Queues, PerQueue];
        for (int q = 0; q < Queues; q++)
        {
            for (int i = 0; i < PerQueue; i++)
            {
                buffers[q, i] = guest.Allocate(4096, 4096);
                Fill(buffers[q, i].Span, SeedOf(q, i));
                Assert.True(guest.Blk[q].TrySubmit(BlkRequestType.Out, SectorOf(q, i), [buffers[q, i]], token: (ulong)i));
            }
            guest.Blk[q].Kick();
        }
        for (int q = 0; q < Queues; q++)
        {
            var done = Enumerable.Range(0, PerQueue / 2).Select(_ => guest.Blk[q].WaitForCompletion(TimeSpan.FromSeconds(10))).ToList();
            Assert.All(done, c => Assert.Equal(0, c.Status));
            Assert.Equal([0UL, 2, 4, 6], done.Select(c => c.Token).Order().ToArray());
            Assert.Equal(PerQueue / 2, InflightFlags(guest.Frontend.Inflight!, q, 64, packed));   // the held ones, marked by the target
        }

        first.Kill();                                   // SIGKILL
        first.WaitForExit();
        StartTarget(holdFrom: -1);
        guest.Reconnect(_socket, TimeSpan.FromSeconds(10));


        for (int q = 0; q < Queues; q++)
        {
            var resubmitted = Enumerable.Range(0, PerQueue / 2).Select(_ => guest.Blk[q].WaitForCompletion(TimeSpan.FromSeconds(10))).ToList();
            Assert.All(resubmitted, c => Assert.Equal(0, c.Status));
            Assert.Equal([1UL, 3, 5, 7], resubmitted.Select(c => c.Token).Order().ToArray());
        }
        Thread.Sleep(200);
        for (int q = 0; q < Queues; q++)
        {
            Assert.False(guest.Blk[q].TryComplete(out var extra), $"queue {q}: request {extra.Token} completed a second time");
            if (!packed) Assert.Equal(PerQueue, guest.SplitQueue(q).DeviceUsedIdx);
            // Packed: three descriptors (header, data, status) per request.
            else Assert.Equal(PackedRingLayout.EncodePosition(3 * PerQueue, true), ((PackedVirtqueueDriver)guest.Queues[q]).UsedPosition);
            Assert.Equal(0, InflightFlags(guest.Frontend.Inflight!, q, 64, packed));
        }

        // Everything is on the disk, read back through the new target.
        var read = guest.Allocate(4096, 4096);
        for (int q = 0; q < Queues; q++)
            for (int i = 0; i < PerQueue; i++)
            {
                Assert.Equal(0, guest.Blk[q].Execute(BlkRequestType.In, SectorOf(q, i), [read]).Status);
                Assert.True(read.Span.SequenceEqual(Random(4096, SeedOf(q, i))), $"queue {q} request {i}: wrong data");
            }
        output.WriteLine($"{Queues * PerQueue / 2} requests in flight across the kill, each completed once ({(packed ? "packed" : "split")} rings)");
    }
}
