using BlkTarget.Vhost.Frontend;
using BlkTarget.Vhost.Protocol;
using Xunit.Abstractions;
using static BlkTarget.IntegrationTests.TestData;

namespace BlkTarget.IntegrationTests;

/// <summary>Starts, stops, guest reboots, reconnects: the sequences QEMU sends over a device's life.</summary>
public sealed class LifecycleTests(ITestOutputHelper output)
{
    private static void WriteBlocks(BlkRequestQueue blk, GuestBuffer buffer, ulong firstSector, int count, int seedBase)
    {
        for (int i = 0; i < count; i++)
        {
            Fill(buffer.Span, seedBase + i);
            Assert.Equal(Ok, blk.Execute(BlkRequestType.Out, firstSector + (ulong)i * (buffer.Length / 512), [buffer]).Status);
        }
    }

    private static void VerifyBlocks(BlkRequestQueue blk, GuestBuffer buffer, ulong firstSector, int count, int seedBase)
    {
        for (int i = 0; i < count; i++)
        {
            buffer.Span.Clear();
            Assert.Equal(Ok, blk.Execute(BlkRequestType.In, firstSector + (ulong)i * (buffer.Length / 512), [buffer]).Status);
            Assert.Equal(Random((int)buffer.Length, seedBase + i), buffer.Span.ToArray());
        }
    }

    [Fact]
    public void GetVringBaseReturnsTheNumberOfRequestsTakenAndStopsTheQueue()
    {
        using var target = new TestTarget(output);
        using var guest = TestGuest.Connect(target.SocketPath, queues: 2, queueSize: 16);
        var buffer = guest.Allocate(4096);
        // More requests than the queue size, so the 16-bit indices wrap the ring several times.
        WriteBlocks(guest.Blk[0], buffer, 0, 37, seedBase: 0);
        WriteBlocks(guest.Blk[1], buffer, 1024, 5, seedBase: 100);

        var bases = guest.Stop();
        Assert.Equal([(ushort)37, (ushort)5], bases);
        Assert.Equal(37, guest.SplitQueue(0).DeviceUsedIdx);
        Assert.Equal(5, guest.SplitQueue(1).DeviceUsedIdx);

        // After GET_VRING_BASE the backend must not touch the ring.
        Assert.True(guest.Blk[0].TrySubmit(BlkRequestType.In, 0, [buffer], 1));
        guest.Queues[0].Kick();
        Assert.False(guest.Queues[0].WaitForUsed(150), "a stopped queue completed a request");
        Assert.Equal(37, guest.SplitQueue(0).DeviceUsedIdx);
    }

    [Fact]
    public void GuestRebootWithFreshRingsAndANewMemoryTableServesRequests()
    {
        using var target = new TestTarget(output);
        using var guest = TestGuest.Connect(target.SocketPath, queues: 2, queueSize: 32);
        var buffer = guest.Allocate(8192);
        WriteBlocks(guest.Blk[0], buffer, 0, 20, seedBase: 0);
        WriteBlocks(guest.Blk[1], buffer, 4096, 3, seedBase: 50);
        Assert.Equal([(ushort)20, (ushort)3], guest.Stop());

        // Reboot: the guest driver re-initialises its rings; QEMU sends the whole start sequence again.
        guest.ResetQueues();
        Assert.All(guest.Queues, q => Assert.Equal(0u, q.NextBase));
        guest.Start();
        VerifyBlocks(guest.Blk[0], buffer, 0, 20, seedBase: 0);
        VerifyBlocks(guest.Blk[1], buffer, 4096, 3, seedBase: 50);
        Assert.Equal([(ushort)20, (ushort)3], guest.Stop());
    }

    [Fact]
    public void GuestRebootIntoDifferentGuestMemoryServesRequests()
    {
        using var target = new TestTarget(output, new TargetSpec { Queues = 1 });
        using var guest = TestGuest.Connect(target.SocketPath, queueSize: 32);
        var buffer = guest.Allocate(4096);
        WriteBlocks(guest.Blk[0], buffer, 0, 4, seedBase: 7);
        guest.Stop();

        // The second boot's memory lives at other guest-physical and virtual addresses, in another memfd.
        using var arena = new GuestMemoryArena(4 << 20, regionCount: 2, guestPhysBase: 0x40_0000_0000);
        using var queue = new VirtqueueDriver(arena, 0, 64, maxIndirectDescriptors: 4);
        var blk = new BlkRequestQueue(queue, arena);
        guest.Frontend.Start(arena, [queue]);
        var other = arena.Allocate(4096, 4096);
        VerifyBlocks(blk, other, 0, 4, seedBase: 7);
        Assert.Equal([(ushort)4], guest.Frontend.Stop([queue]));
    }

    [Fact]
    public void StopThenResumeWithoutResetContinuesFromTheReportedBase()
    {
        using var target = new TestTarget(output);
        using var guest = TestGuest.Connect(target.SocketPath, queueSize: 8);
        var buffer = guest.Allocate(4096);
        WriteBlocks(guest.Blk[0], buffer, 0, 11, seedBase: 0);
        Assert.Equal([(ushort)11], guest.Stop());
        Assert.Equal(11u, guest.Queues[0].NextBase);

        // Like a migration or stop/cont: same rings, SET_VRING_BASE with what GET_VRING_BASE said.
        guest.Start();
        VerifyBlocks(guest.Blk[0], buffer, 0, 11, seedBase: 0);
        Assert.Equal([(ushort)22], guest.Stop());
    }

    [Fact]
    public void SecondFrontendSeesTheDataTheFirstWrote()
    {
        using var target = new TestTarget(output);
        using (var first = TestGuest.Connect(target.SocketPath, queues: 2))
        {
            var buffer = first.Allocate(16384);
            WriteBlocks(first.Blk[0], buffer, 0, 8, seedBase: 300);
            WriteBlocks(first.Blk[1], buffer, 8192, 8, seedBase: 400);
            // Leaves without GET_VRING_BASE, as a QEMU that is killed would.
        }
        Assert.True(target.WaitForNoFrontend(TimeSpan.FromSeconds(5)));

        using var second = TestGuest.Connect(target.SocketPath, queues: 2);
        var check = second.Allocate(16384);
        VerifyBlocks(second.Blk[1], check, 0, 8, seedBase: 300);
        VerifyBlocks(second.Blk[0], check, 8192, 8, seedBase: 400);
        Assert.Equal(2, target.Server.SessionsServed);
    }

    [Fact]
    public void FrontendLeavingWithRequestsInFlightDoesNotDisturbTheNextOne()
    {
        using var target = new TestTarget(output);
        using (var first = TestGuest.Connect(target.SocketPath, queueSize: 64))
        {
            var blk = first.Blk[0];
            var buffer = first.Allocate(1 << 20);
            int submitted = 0;
            while (blk.TrySubmit(BlkRequestType.Out, (ulong)submitted * 2048, [buffer], (ulong)submitted)) submitted++;
            blk.Kick();
            Assert.True(submitted > 10);
        }
        Assert.True(target.WaitForNoFrontend(TimeSpan.FromSeconds(5)));

        using var second = TestGuest.Connect(target.SocketPath);
        var data = second.Allocate(4096);
        WriteBlocks(second.Blk[0], data, 0, 2, seedBase: 1);
        VerifyBlocks(second.Blk[0], data, 0, 2, seedBase: 1);
    }

    [Fact]
    public void CallDescriptorCanBeSwappedWhileTheQueueRuns()
    {
        using var target = new TestTarget(output);
        using var guest = TestGuest.Connect(target.SocketPath);
        var q = guest.Queues[0];
        var blk = guest.Blk[0];
        Assert.Equal(Ok, blk.Execute(BlkRequestType.Flush, 0, []).Status);
        q.DrainCalls();

        // No call fd (what QEMU sends while the guest masks the vector): completions arrive unsignalled.
        guest.Frontend.SetVringCall(0, -1);
        for (int i = 0; i < 5; i++)
        {
            Assert.True(blk.TrySubmit(BlkRequestType.Flush, 0, [], (ulong)i));
            q.Kick();
            Assert.True(SpinWait.SpinUntil(() => q.HasUsed, 5000));
            Assert.True(blk.TryComplete(out var c));
            Assert.Equal(Ok, c.Status);
        }
        Assert.Equal(0ul, q.DrainCalls());

        // The call fd back: signalled again.
        guest.Frontend.SetVringCall(0, q.CallFd);
        Assert.Equal(Ok, blk.Execute(BlkRequestType.Flush, 0, []).Status);
    }

    [Fact]
    public void KickBeforeSetVringEnableIsNotLost()
    {
        using var target = new TestTarget(output);
        using var guest = TestGuest.Connect(target.SocketPath, start: false);
        guest.Start(enable: false);
        var buffer = guest.Allocate(4096);
        Assert.True(guest.Blk[0].TrySubmit(BlkRequestType.Flush, 0, [], 77));
        guest.Queues[0].Kick();
        Assert.False(guest.Queues[0].WaitForUsed(100), "a queue not yet enabled processed a request");

        guest.Frontend.EnableQueues(guest.Queues, true);
        var completion = guest.Blk[0].WaitForCompletion(TimeSpan.FromSeconds(5));
        Assert.Equal(77ul, completion.Token);
        Assert.Equal(Ok, completion.Status);
    }

    [Fact]
    public void RingsRunWithoutSetVringEnableWhenProtocolFeaturesBitIsNotAcked()
    {
        using var target = new TestTarget(output);
        var options = new VhostUserFrontendOptions { DisabledFeatures = VirtioFeatures.Bit(VirtioFeatures.VhostUserProtocolFeatures) };
        using var guest = TestGuest.Connect(target.SocketPath, options: options);
        Assert.False(guest.Frontend.HasFeature(VirtioFeatures.VhostUserProtocolFeatures));
        var buffer = guest.Allocate(4096);
        WriteBlocks(guest.Blk[0], buffer, 0, 3, seedBase: 9);
        VerifyBlocks(guest.Blk[0], buffer, 0, 3, seedBase: 9);
    }

    [Fact]
    public void AddMemRegInsteadOfSetMemTableServesRequestsAcrossAReboot()
    {
        using var target = new TestTarget(output, new TargetSpec { Queues = 1 });
        var options = new VhostUserFrontendOptions { UseAddMemReg = true };
        using var guest = TestGuest.Connect(target.SocketPath, options: options, regions: 3, arenaBytes: 6 << 20);
        Assert.True(guest.Frontend.MaxMemSlots >= 3);
        var buffer = guest.Allocate(4096);
        WriteBlocks(guest.Blk[0], buffer, 0, 3, seedBase: 21);
        guest.Stop();

        // Reboot into different memory: the frontend removes the old regions and adds the new ones.
        using var arena = new GuestMemoryArena(2 << 20, guestPhysBase: 0x2_0000_0000);
        using var queue = new VirtqueueDriver(arena, 0, 32);
        var blk = new BlkRequestQueue(queue, arena);
        guest.Frontend.Start(arena, [queue]);
        VerifyBlocks(blk, arena.Allocate(4096, 4096), 0, 3, seedBase: 21);
    }

    [Fact]
    public void EverythingWorksWithoutReplyAck()
    {
        using var target = new TestTarget(output);
        var options = new VhostUserFrontendOptions { ProtocolFeatures = VhostUserFrontendOptions.SupportedProtocolFeatures & ~ProtocolFeatures.ReplyAck };
        using var guest = TestGuest.Connect(target.SocketPath, queues: 2, options: options);
        Assert.False(guest.Frontend.ReplyAckNegotiated);
        var buffer = guest.Allocate(4096);
        WriteBlocks(guest.Blk[1], buffer, 0, 3, seedBase: 31);
        Assert.Equal([(ushort)0, (ushort)3], guest.Stop());
        guest.ResetQueues();
        guest.Start();
        VerifyBlocks(guest.Blk[0], buffer, 0, 3, seedBase: 31);
    }
}
