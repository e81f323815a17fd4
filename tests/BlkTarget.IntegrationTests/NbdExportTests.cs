using System.Text.Json.Nodes;
using BlkTarget.Configuration;
using BlkTarget.Hosting;
using BlkTarget.Management;
using BlkTarget.Storage.Nbd;
using BlkTarget.Tests.Nbd;
using BlkTarget.Vhost.Blk;
using BlkTarget.Vhost.Frontend;
using BlkTarget.Vhost.Protocol;
using BlkTarget.Vhost.Queues;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit.Abstractions;
using static BlkTarget.IntegrationTests.TestData;

namespace BlkTarget.IntegrationTests;

/// <summary>An nbd disk served over a real socket: our frontend reads and writes it on two queues served by two reactors
/// (sharing one connection without multi-conn, one connection each with it), the features offered follow what the
/// server can do, and the export survives its NBD server being killed and restarted.</summary>
public sealed class NbdExportTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("blkt-nbd-").FullName;

    private string Rpc => Path.Combine(_dir, "rpc.sock");

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private JsonNode? Call(string method, JsonObject parameters) => RpcClient.Call(Rpc, method, parameters);

    private TestGuest Export(TargetRuntime runtime, string uri)
    {
        Call("disk_create", new JsonObject { ["name"] = "d1", ["backend"] = $"nbd:{uri}" });
        string socket = Path.Combine(_dir, "vm1.sock");
        Call("export_create_blk", new JsonObject { ["name"] = "vm1", ["socket"] = socket, ["disk"] = "d1", ["queues"] = 2 });
        return TestGuest.Connect(socket, queues: 2);
    }

    private static TargetRuntime StartTarget(string rpc) =>
        TargetRuntime.Start(new TargetSettings { Devices = [], Cpus = [0, 1] }, NullLoggerFactory.Instance, new ManagementSettings { RpcSocket = rpc });

    [Theory]
    [InlineData(1)]
    [InlineData(4)]
    public void Two_reactors_read_and_write_an_nbd_disk_and_its_server_lacks_nothing_so_discard_and_zeroes_are_offered(int shared)
    {
        using var server = NbdTestServer.Start(NbdTestServer.Kind.QemuNbd, 16 << 20, shared: shared);
        using var runtime = StartTarget(Rpc);
        using var guest = Export(runtime, server.Uri);
        Assert.Equal(32768UL, guest.Frontend.Config!.Capacity);
        Assert.True(guest.Frontend.HasFeature(VirtioBlk.FeatureDiscard));
        Assert.True(guest.Frontend.HasFeature(VirtioBlk.FeatureWriteZeroes));
        WriteAndCrossRead(guest, rounds: 8);
        Assert.NotEqual(Ok, guest.Blk[0].Execute(BlkRequestType.In, 32768, [guest.Allocate(512)]).Status);   // past the end
    }

    /// <summary>Each queue writes 64 KiB areas in several pieces and flushes; the other queue reads them back.</summary>
    private static void WriteAndCrossRead(TestGuest guest, int rounds)
    {
        for (int round = 0; round < rounds; round++)
        {
            for (int q = 0; q < 2; q++)
            {
                var data = guest.Allocate(65536);
                Fill(data.Span, seed: round * 2 + q);
                Assert.Equal(Ok, guest.Blk[q].Execute(BlkRequestType.Out, (ulong)(round * 2 + q) * 128, Split(data, 4096, 28672, 32768)).Status);
                Assert.Equal(Ok, guest.Blk[q].Execute(BlkRequestType.Flush, 0, []).Status);
            }
            for (int q = 0; q < 2; q++)
            {
                var back = guest.Allocate(65536);
                Assert.Equal(Ok, guest.Blk[1 - q].Execute(BlkRequestType.In, (ulong)(round * 2 + q) * 128, [back]).Status);
                Assert.Equal(Random(65536, round * 2 + q), back.Span.ToArray());
            }
        }
    }

    [Fact]
    public void A_server_without_trim_or_zero_gets_neither_offered_to_the_guest()
    {
        using var server = NbdTestServer.StartNbdkit(1 << 20, file => ["--filter=nozero", "eval", "zeromode=none", "get_size=echo 1048576",
            $"pread=dd if={file} skip=$4 count=$3 iflag=skip_bytes,count_bytes status=none",
            $"pwrite=dd of={file} seek=$4 conv=notrunc oflag=seek_bytes status=none",
            "can_write=exit 0", "can_flush=exit 3", "can_trim=exit 3", "can_zero=exit 3", "can_multi_conn=exit 3"]);
        using var runtime = StartTarget(Rpc);
        using var guest = Export(runtime, server.Uri);
        Assert.False(guest.Frontend.HasFeature(VirtioBlk.FeatureDiscard));
        Assert.False(guest.Frontend.HasFeature(VirtioBlk.FeatureWriteZeroes));
        var data = guest.Allocate(4096);
        Fill(data.Span, seed: 3);
        Assert.Equal(Ok, guest.Blk[0].Execute(BlkRequestType.Out, 8, [data]).Status);
        var back = guest.Allocate(4096);
        Assert.Equal(Ok, guest.Blk[1].Execute(BlkRequestType.In, 8, [back]).Status);
        Assert.Equal(Random(4096, 3), back.Span.ToArray());
    }

    [Fact]
    public void A_killed_nbd_server_fails_requests_with_ioerr_and_the_export_serves_again_after_its_restart()
    {
        using var server = NbdTestServer.Start(NbdTestServer.Kind.QemuNbd, 16 << 20, shared: 1);
        using var runtime = StartTarget(Rpc);
        using var guest = Export(runtime, server.Uri);
        WriteAndCrossRead(guest, rounds: 1);

        server.Stop();
        var buffer = guest.Allocate(4096);
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (guest.Blk[0].Execute(BlkRequestType.In, 0, [buffer]).Status == Ok)
            Assert.True(DateTime.UtcNow < deadline, "reads kept succeeding with the server gone");
        for (int q = 0; q < 2; q++)
        {
            Assert.Equal(IoErr, guest.Blk[q].Execute(BlkRequestType.In, 0, [buffer]).Status);
            Assert.Equal(IoErr, guest.Blk[q].Execute(BlkRequestType.Out, 0, [buffer]).Status);
        }

        server.Restart();
        deadline = DateTime.UtcNow.AddSeconds(15);
        for (int q = 0; q < 2; q++)
        {
            while (guest.Blk[q].Execute(BlkRequestType.In, 0, [buffer]).Status != Ok)
            {
                Assert.True(DateTime.UtcNow < deadline, $"queue {q} did not get its disk back after the server restarted");
                Thread.Sleep(50);
            }
        }
        Assert.Equal(Random(65536, 0)[..4096], buffer.Span.ToArray());     // written before the loss, flushed
        WriteAndCrossRead(guest, rounds: 2);
    }

    /// <summary>
    /// The nbd data path allocates nothing on the reactors in steady state: issuing (one command per contiguous run),
    /// driving the socket, the completion callbacks libnbd makes on the driving reactor and the hand-over of another
    /// reactor's completions. Two queues on two reactors share one connection (qemu-nbd --shared=1), so both the
    /// driving and the issuing-only side run; measured from sleep to sleep as for the RAM disk.
    /// </summary>
    [Fact]
    public void Steady_state_reads_and_writes_allocate_nothing_on_the_reactors()
    {
        using var server = NbdTestServer.Start(NbdTestServer.Kind.QemuNbd, 16 << 20, shared: 1);
        using var target = new TestTarget(output, new TargetSpec
        {
            Backend = () => NbdDisk.Open(new NbdDiskOptions { Uri = server.Uri }, NullLogger.Instance),
        });
        var reactors = target.Reactors.Reactors;
        Assert.Equal(2, reactors.Count);
        using var guest = TestGuest.Connect(target.SocketPath, queues: 2, queueSize: 32);
        var buffers = Enumerable.Range(0, 16).Select(_ => guest.Allocate(8192)).ToArray();
        var done = new BlkCompletion[8];

        void Round()
        {
            for (int q = 0; q < 2; q++)
            {
                var blk = guest.Blk[q];
                for (int i = 0; i < 8; i++)
                {
                    var buffer = buffers[q * 8 + i];
                    // Every other request in two pieces (two commands), the rest in one.
                    bool ok = i % 2 == 0
                        ? blk.TrySubmit(BlkRequestType.In, (ulong)(q * 8 + i) * 16, [buffer], (ulong)i)
                        : blk.TrySubmit(BlkRequestType.Out, (ulong)(q * 8 + i) * 16, Split(buffer, 4096, 4096), (ulong)i);
                    Assert.True(ok);
                }
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
                for (int i = 0; i < 8; i++) Assert.Equal(Ok, done[i].Status);
            }
        }

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

        for (int i = 0; i < 300; i++) Round();      // warm-up (JIT, tiering, first-use statics)
        var before = AllocatedWhenAsleep();
        for (int i = 0; i < 1000; i++) Round();
        var after = AllocatedWhenAsleep();
        for (int r = 0; r < reactors.Count; r++)
            Assert.True(after[r] == before[r], $"reactor {r} allocated {after[r] - before[r]} bytes during 16000 requests");
    }
}
