using BlkTarget.Storage.Interop;
using BlkTarget.Vhost.Blk;
using BlkTarget.Vhost.Frontend;
using BlkTarget.Vhost.Memory;
using BlkTarget.Vhost.Protocol;
using BlkTarget.Vhost.Queues;
using Xunit.Abstractions;
using static BlkTarget.IntegrationTests.TestData;

namespace BlkTarget.IntegrationTests;

/// <summary>
/// Live migration against the real target over real sockets: dirty page logging as QEMU switches it on and off
/// (SET_LOG_BASE, SET_FEATURES with VHOST_F_LOG_ALL, SET_VRING_ADDR with VHOST_VRING_F_LOG), and a queue stopped on one
/// export and continued on another export of the same disk from the bases GET_VRING_BASE returned.
/// </summary>
public sealed class MigrationTests(ITestOutputHelper output)
{
    private const ulong Page = DirtyLog.PageSize;

    private static IEnumerable<ulong> PagesOf(GuestBuffer buffer) => PagesOf(buffer.Gpa, buffer.Length);

    private static IEnumerable<ulong> PagesOf(ulong gpa, ulong length)
    {
        for (ulong p = gpa / Page; p <= (gpa + length - 1) / Page; p++) yield return p;
    }

    [Fact]
    public void The_log_holds_exactly_the_pages_the_target_wrote_while_logging_was_on()
    {
        using var target = new TestTarget(output, new TargetSpec { Queues = 1 });
        using var guest = TestGuest.Connect(target.SocketPath, queues: 1);
        Assert.NotEqual(0UL, guest.Frontend.OfferedFeatures & VirtioFeatures.Bit(VirtioFeatures.LogAll));
        Assert.True((guest.Frontend.AckedProtocolFeatures & ProtocolFeatures.LogShmfd) != 0);
        var blk = guest.Blk[0];
        var queue = guest.SplitQueue(0);
        var source = guest.Allocate(2 * 4096, 4096);
        Fill(source.Span, seed: 1);
        Assert.Equal(Ok, blk.Execute(BlkRequestType.Out, 0, [source]).Status);

        using var log = new DirtyLogArea(guest.Arena.GuestPhysBase + guest.Arena.Size);
        using var logFd = EventFd.Create();
        guest.Frontend.SetLogFd(logFd.Fd);
        guest.Frontend.StartLogging(log, guest.Queues);
        log.TakeMarkedPages();   // ring restarts may have touched the used ring: start from a clean log

        // A read into one page, a read into buffers over three pages (one of them crossing two page boundaries), a write.
        var inOnePage = guest.Allocate(4096, 4096).Slice(512, 1024);
        var wide = guest.Allocate(3 * 4096, 4096);
        var spanning = new[] { wide.Slice(0x800, 0x1000), wide.Slice(0x1800, 0x1000) };
        Assert.Equal(Ok, blk.Execute(BlkRequestType.In, 0, [inOnePage]).Status);
        Assert.Equal(Ok, blk.Execute(BlkRequestType.In, 0, spanning).Status);
        Assert.Equal(Ok, blk.Execute(BlkRequestType.Out, 64, [source]).Status);
        Assert.Equal(source.Span[..1024].ToArray(), inOnePage.Span.ToArray());

        var marked = log.TakeMarkedPages().ToHashSet();
        var written = PagesOf(inOnePage).Concat(PagesOf(wide.Gpa + 0x800, 0x2000))
            .Concat(PagesOf(blk.HeaderStatusArea.Gpa + 16, 1)).ToHashSet();
        var usedRing = PagesOf(queue.UsedRing).ToHashSet();
        output.WriteLine($"marked pages: {string.Join(", ", marked.Order().Select(p => $"0x{p:x}"))}");
        Assert.Superset(written, marked);
        Assert.Contains(PagesOf(queue.UsedRing.Gpa + 2, 2).Single(), marked);
        Assert.Empty(marked.Except(written).Except(usedRing));
        Assert.DoesNotContain(PagesOf(source).First(), marked);

        // A new log replaces the old one: what follows lands in the new one only.
        using var second = new DirtyLogArea(guest.Arena.GuestPhysBase + guest.Arena.Size);
        guest.Frontend.SetLogBase(second);
        // Until the switch the old log could still get used-ring marks (the queue re-enabling notifications when idle).
        Assert.Empty(log.TakeMarkedPages().Except(usedRing));
        var later = guest.Allocate(4096, 4096);
        Assert.Equal(Ok, blk.Execute(BlkRequestType.In, 8, [later]).Status);
        Assert.Empty(log.TakeMarkedPages());
        Assert.Contains(PagesOf(later).Single(), second.MarkedPages());

        // Logging off: nothing more is marked.
        guest.Frontend.StopLogging(guest.Queues);
        second.TakeMarkedPages();
        Assert.Equal(Ok, blk.Execute(BlkRequestType.In, 0, [later]).Status);
        Assert.Empty(second.MarkedPages());
    }

    [Fact]
    public void On_a_packed_ring_the_log_holds_the_data_pages_and_the_used_descriptors_in_the_descriptor_ring()
    {
        using var target = new TestTarget(output, new TargetSpec { Queues = 1 });
        using var guest = TestGuest.Connect(target.SocketPath, queues: 1, packed: true);
        var queue = (PackedVirtqueueDriver)guest.Queues[0];
        using var log = new DirtyLogArea(guest.Arena.GuestPhysBase + guest.Arena.Size);
        guest.Frontend.StartLogging(log, guest.Queues);
        log.TakeMarkedPages();
        var buffer = guest.Allocate(2 * 4096, 4096);
        Assert.Equal(Ok, guest.Blk[0].Execute(BlkRequestType.In, 0, [buffer]).Status);
        var marked = log.TakeMarkedPages().ToHashSet();
        Assert.Superset(PagesOf(buffer).Append(PagesOf(guest.Blk[0].HeaderStatusArea.Gpa + 16, 1).Single()).ToHashSet(), marked);
        Assert.Contains(PagesOf(queue.DescriptorRing).First(), marked);
        var allowed = PagesOf(buffer).Concat(PagesOf(guest.Blk[0].HeaderStatusArea)).Concat(PagesOf(queue.DescriptorRing))
            .Concat(PagesOf(queue.DeviceEventArea)).ToHashSet();
        Assert.Empty(marked.Except(allowed));
    }

    [Fact]
    public void Logging_switched_on_before_the_log_arrives_starts_marking_once_it_does()
    {
        using var target = new TestTarget(output, new TargetSpec { Queues = 1 });
        using var guest = TestGuest.Connect(target.SocketPath, queues: 1);
        guest.Frontend.SetFeatures(guest.Frontend.AckedFeatures | VirtioFeatures.Bit(VirtioFeatures.LogAll));
        var buffer = guest.Allocate(4096, 4096);
        Assert.Equal(Ok, guest.Blk[0].Execute(BlkRequestType.In, 0, [buffer]).Status);
        using var log = new DirtyLogArea(guest.Arena.GuestPhysBase + guest.Arena.Size);
        guest.Frontend.SetLogBase(log);
        Assert.Equal(Ok, guest.Blk[0].Execute(BlkRequestType.In, 0, [buffer]).Status);
        Assert.Contains(PagesOf(buffer).Single(), log.MarkedPages());
    }

    [Fact]
    public void A_log_the_frontend_describes_beyond_its_file_is_refused_and_the_session_goes_on()
    {
        using var target = new TestTarget(output, new TargetSpec { Queues = 1 });
        using var guest = TestGuest.Connect(target.SocketPath, queues: 1);
        using var fd = MemFd.Create("short-log", 4096);
        Span<byte> payload = stackalloc byte[LogDescription.Length];
        new LogDescription(1 << 20, 0).Write(payload);
        guest.Frontend.Connection.Send(VhostUserRequest.SetLogBase, 0, payload, [fd.Fd]);
        using (var reply = guest.Frontend.ReceiveRaw())
        {
            Assert.NotNull(reply);
            Assert.Equal(VhostUserRequest.SetLogBase, reply.Header.Request);
            Assert.Equal(8, reply.Payload.Length);
            Assert.NotEqual(0, reply.Payload[0]);
        }
        var buffer = guest.Allocate(4096);
        Assert.Equal(Ok, guest.Blk[0].Execute(BlkRequestType.In, 0, [buffer]).Status);
    }

    [Fact]
    public void Queues_stopped_mid_io_on_one_export_continue_on_another_export_from_the_bases_with_every_request_completed_once()
    {
        using var target = new TestTarget(output, new TargetSpec { Queues = 2, SizeBytes = 16 << 20 });
        // Export B: a second device on the same disk (what `disk create --shared` plus a second export gives).
        var deviceB = new VirtioBlkDevice("it-dest", target.Disk, new BlkOptions { Queues = 2, Serial = "dest" }, target.Log);
        string socketB = $"/tmp/blkt-it-{Guid.NewGuid():N}.sock";
        using var serverB = VhostUserServer.Start(socketB, deviceB, target.Reactors, 2, target.Log, new VhostUserSessionOptions());

        using var arena = new GuestMemoryArena(16 << 20);
        var drivers = new[] { new VirtqueueDriver(arena, 0, 128, 8), new VirtqueueDriver(arena, 1, 128, 8) };
        var queues = drivers.Select(d => new BlkRequestQueue(d, arena)).ToArray();
        // Batch 1 nearly fills the rings; what the target had not taken when the queues stopped stays in the avail rings
        // after the bases, and batch 2 must still fit beside it.
        const int First = 100, Second = 25;
        var buffers = new GuestBuffer[2 * (First + Second)];
        int submitted = 0;
        var completed = new int[buffers.Length];
        try
        {
            using (var source = VhostUserFrontend.Connect(target.SocketPath))
            {
                source.Start(arena, drivers);
                using var log = new DirtyLogArea(arena.GuestPhysBase + arena.Size);
                source.StartLogging(log, drivers);
                // Batch 1 on both queues, kicked; the target works on it while the frontend stops the queues.
                SubmitBatch(First);
                foreach (var q in queues) q.Kick();
                var bases = source.Stop(drivers);
                output.WriteLine($"stopped at bases {string.Join(", ", bases)}; device used idx {string.Join(", ", drivers.Select(d => d.DeviceUsedIdx))}");
                // GET_VRING_BASE answers only after the queue drained: everything taken is completed and published.
                for (int q = 0; q < 2; q++) Assert.Equal(bases[q], (uint)drivers[q].DeviceUsedIdx);
                Reap();
                // The source's marks cover the data of every request (writes only: status pages and the used rings).
                foreach (var d in drivers) Assert.Contains(d.UsedRing.Gpa / Page, log.MarkedPages());
            }
            // Requests the guest queues while the VM moves: made available, not kicked, after the bases.
            SubmitBatch(Second);
            foreach (var q in queues) q.Queue.PublishAvail();
            using var destination = VhostUserFrontend.Connect(socketB);
            destination.Start(arena, drivers);
            long deadline = Environment.TickCount64 + 10_000;
            while (completed.Sum() < buffers.Length && Environment.TickCount64 < deadline)
            {
                foreach (var q in queues) q.Queue.WaitForUsed(50);
                Reap();
            }
            Assert.All(completed, c => Assert.Equal(1, c));
            // Everything both exports wrote is on the shared disk.
            for (int i = 0; i < buffers.Length; i++)
            {
                var back = arena.Allocate(4096, 512);
                Assert.Equal(Ok, queues[0].Execute(BlkRequestType.In, (ulong)i * 8, [back]).Status);
                Assert.Equal(Random(4096, seed: i), back.Span.ToArray());
            }
        }
        finally
        {
            foreach (var d in drivers) d.Dispose();
            File.Delete(socketB);
        }

        void SubmitBatch(int count)
        {
            for (int q = 0; q < 2; q++)
                for (int k = 0; k < count; k++)
                {
                    int token = submitted++;
                    buffers[token] = arena.Allocate(4096, 512);
                    Fill(buffers[token].Span, seed: token);
                    Assert.True(queues[q].TrySubmit(BlkRequestType.Out, (ulong)token * 8, [buffers[token]], (ulong)token, indirect: true));
                }
        }

        void Reap()
        {
            foreach (var q in queues)
                while (q.TryComplete(out var c))
                {
                    Assert.Equal(Ok, c.Status);
                    completed[c.Token]++;
                }
        }
    }
}
