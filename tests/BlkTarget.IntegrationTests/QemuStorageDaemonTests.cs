using System.Diagnostics;
using System.Text;
using BlkTarget.Vhost.Blk;
using BlkTarget.Vhost.Frontend;
using BlkTarget.Vhost.Protocol;
using Xunit.Abstractions;
using static BlkTarget.IntegrationTests.TestData;

namespace BlkTarget.IntegrationTests;

/// <summary>A qemu-storage-daemon exporting a file under /dev/shm as vhost-user-blk, for as long as it is not disposed.</summary>
internal sealed class QemuStorageDaemon : IDisposable
{
    private static readonly string[] Candidates = ["/usr/bin/qemu-storage-daemon", "/usr/local/bin/qemu-storage-daemon"];
    private readonly Process _process;
    private readonly StringBuilder _log = new();

    public QemuStorageDaemon(ulong sizeBytes, int queues)
    {
        // A missing daemon fails the test rather than skipping it: a skipped comparison must never look like a
        // passed one.
        string exe = Candidates.FirstOrDefault(File.Exists) ?? throw new InvalidOperationException(
            "qemu-storage-daemon is required (Debian package qemu-system-common; tests/e2e/install-deps.sh installs it)");
        string id = Guid.NewGuid().ToString("N")[..12];
        ImagePath = $"/dev/shm/blkt-qsd-{id}.img";
        SocketPath = $"/tmp/blkt-qsd-{id}.sock";
        using (var image = File.Create(ImagePath)) image.SetLength((long)sizeBytes);
        var start = new ProcessStartInfo(exe)
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
            UseShellExecute = false,
        };
        start.ArgumentList.Add("--blockdev");
        start.ArgumentList.Add($"driver=file,node-name=f0,filename={ImagePath},cache.direct=off,discard=unmap");
        start.ArgumentList.Add("--export");
        start.ArgumentList.Add($"type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path={SocketPath},writable=on,num-queues={queues}");
        _process = new Process { StartInfo = start };
        _process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (_log) _log.AppendLine(e.Data); };
        _process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (_log) _log.AppendLine(e.Data); };
        _process.Start();
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
    }

    public string ImagePath { get; }
    public string SocketPath { get; }
    public bool HasExited => _process.HasExited;

    public string Log
    {
        get { lock (_log) return _log.ToString(); }
    }

    public void Dispose()
    {
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill();
                _process.WaitForExit(5000);
            }
        }
        catch (InvalidOperationException)
        {
        }
        _process.Dispose();
        File.Delete(ImagePath);
        File.Delete(SocketPath);
    }
}

/// <summary>
/// The same frontend against a third-party backend, qemu-storage-daemon (libvhost-user inside): proof that the
/// frontend speaks the protocol as others implement it, which the load generator depends on.
/// </summary>
public sealed class QemuStorageDaemonTests(ITestOutputHelper output)
{
    private const ulong DiskBytes = 16 << 20;

    private TestGuest ConnectTo(QemuStorageDaemon daemon, int queues, VhostUserFrontendOptions? options = null)
    {
        try
        {
            return TestGuest.Connect(daemon.SocketPath, queues: queues, queueSize: 64, options: options);
        }
        finally
        {
            output.WriteLine(daemon.Log);
        }
    }

    [Fact]
    public void FrontendNegotiatesWithQemuStorageDaemon()
    {
        using var daemon = new QemuStorageDaemon(DiskBytes, queues: 2);
        using var guest = ConnectTo(daemon, queues: 2);
        var frontend = guest.Frontend;
        output.WriteLine($"offered 0x{frontend.OfferedFeatures:x}, protocol {frontend.OfferedProtocolFeatures}, acked 0x{frontend.AckedFeatures:x}");
        Assert.True(frontend.ReplyAckNegotiated);
        Assert.True((frontend.AckedProtocolFeatures & ProtocolFeatures.Config) != 0);
        Assert.Equal(2, frontend.BackendQueueCount);
        Assert.True(frontend.HasFeature(VirtioFeatures.Version1));
        var config = frontend.Config!;
        Assert.Equal(DiskBytes / 512, config.Capacity);
        Assert.Equal(512u, config.BlockSize);
        Assert.Equal((ushort)2, config.NumQueues);
    }

    [Fact]
    public void ReadWriteFlushAndGetIdWorkAgainstQemuStorageDaemon()
    {
        using var daemon = new QemuStorageDaemon(DiskBytes, queues: 2);
        using var guest = ConnectTo(daemon, queues: 2);
        var source = guest.Allocate(64 << 10);
        Fill(source.Span, seed: 77);
        var blk0 = guest.Blk[0];
        var blk1 = guest.Blk[1];
        // Direct single buffer, odd multi-segment, and indirect.
        Assert.Equal(Ok, blk0.Execute(BlkRequestType.Out, 0, [source]).Status);
        Assert.Equal(Ok, blk0.Execute(BlkRequestType.Out, 1024, Split(source, 1000, 24, 31744, 32768)).Status);
        Assert.Equal(Ok, blk1.Execute(BlkRequestType.Out, 2048, Split(source, 16384, 16384, 16384, 16384), indirect: true).Status);
        Assert.Equal(Ok, blk1.Execute(BlkRequestType.Flush, 0, []).Status);

        foreach (ulong sector in new ulong[] { 0, 1024, 2048 })
        {
            var back = guest.Allocate(64 << 10);
            var completion = (sector == 2048 ? blk0 : blk1).Execute(BlkRequestType.In, sector, Split(back, 4096, 61440), indirect: sector == 1024);
            Assert.Equal(Ok, completion.Status);
            Assert.Equal(source.Span.ToArray(), back.Span.ToArray());
        }

        var id = guest.Allocate(20);
        Assert.Equal(Ok, blk0.Execute(BlkRequestType.GetId, 0, [id]).Status);
        Assert.NotEqual(0, id.Span[0]);
        Assert.Equal(IoErr, blk0.Execute(BlkRequestType.In, DiskBytes / 512, [source.Slice(0, 512)]).Status);
    }

    [Fact]
    public void WriteZeroesAndPipelinedIoWorkAgainstQemuStorageDaemon()
    {
        using var daemon = new QemuStorageDaemon(DiskBytes, queues: 1);
        using var guest = ConnectTo(daemon, queues: 1, new VhostUserFrontendOptions { EventIdx = true });
        var blk = guest.Blk[0];
        const int count = 128;
        var buffers = Enumerable.Range(0, 16).Select(_ => guest.Allocate(4096)).ToArray();
        // Up to 16 writes in flight.
        int next = 0, completed = 0;
        var free = new Stack<int>(Enumerable.Range(0, 16));
        while (completed < count)
        {
            while (next < count && free.Count > 0)
            {
                int b = free.Pop();
                Fill(buffers[b].Span, seed: next);
                Assert.True(blk.TrySubmit(BlkRequestType.Out, (ulong)next * 8, [buffers[b]], (ulong)b));
                next++;
            }
            blk.Kick();
            Assert.True(blk.Queue.WaitForUsed(10_000));
            while (blk.TryComplete(out var c))
            {
                Assert.Equal(Ok, c.Status);
                free.Push((int)c.Token);
                completed++;
            }
        }
        var check = guest.Allocate(4096);
        for (int i = 0; i < count; i += 17)
        {
            Assert.Equal(Ok, blk.Execute(BlkRequestType.In, (ulong)i * 8, [check]).Status);
            Assert.Equal(Random(4096, seed: i), check.Span.ToArray());
        }

        Assert.True(guest.Frontend.HasFeature(VirtioBlk.FeatureWriteZeroes));
        var ranges = guest.Allocate(16, 16);
        BlkRequestQueue.WriteRanges(ranges.Span, [new BlkRange(8, 16)]);
        Assert.Equal(Ok, blk.Execute(BlkRequestType.WriteZeroes, 0, [ranges]).Status);
        var zeros = guest.Allocate(3 * 4096);
        Assert.Equal(Ok, blk.Execute(BlkRequestType.In, 0, [zeros]).Status);
        Assert.Equal(Random(4096, seed: 0), zeros.Span[..4096].ToArray());
        Assert.True(AllZero(zeros.Span[4096..12288]));
    }

    [Fact]
    public void StopAndGuestRebootWorkAgainstQemuStorageDaemon()
    {
        using var daemon = new QemuStorageDaemon(DiskBytes, queues: 1);
        using var guest = ConnectTo(daemon, queues: 1);
        var buffer = guest.Allocate(4096);
        for (int i = 0; i < 9; i++)
        {
            Fill(buffer.Span, seed: 500 + i);
            Assert.Equal(Ok, guest.Blk[0].Execute(BlkRequestType.Out, (ulong)i * 8, [buffer]).Status);
        }
        Assert.Equal([(ushort)9], guest.Stop());
        guest.ResetQueues();
        guest.Start();
        for (int i = 0; i < 9; i++)
        {
            Assert.Equal(Ok, guest.Blk[0].Execute(BlkRequestType.In, (ulong)i * 8, [buffer]).Status);
            Assert.Equal(Random(4096, seed: 500 + i), buffer.Span.ToArray());
        }
    }
}
