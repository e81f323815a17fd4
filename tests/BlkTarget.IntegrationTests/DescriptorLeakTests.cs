using System.Buffers.Binary;
using BlkTarget.Vhost.Frontend;
using BlkTarget.Storage.Interop;
using BlkTarget.Vhost.Protocol;
using Xunit.Abstractions;

namespace BlkTarget.IntegrationTests;

[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class DescriptorAccountingCollection
{
    public const string Name = "descriptor accounting";
}

/// <summary>
/// Counts this process's open file descriptors around sessions that send descriptors with rejected or malformed
/// messages: the target must close every fd it does not keep. Runs alone, since other tests open fds too.
/// </summary>
[Collection(DescriptorAccountingCollection.Name)]
public sealed class DescriptorLeakTests(ITestOutputHelper output)
{
    private static int OpenFds() => Directory.GetFiles("/proc/self/fd").Length;

    private static void HostileSession(TestTarget target)
    {
        using (var guest = TestGuest.Connect(target.SocketPath, queues: 2))
        {
            var frontend = guest.Frontend;
            int memfd = guest.Arena.MemoryFd.Fd;
            // SET_MEM_TABLE: more fds than regions, and fewer.
            var table = new byte[8 + 32];
            MemoryTablePayload.Write(table, guest.Arena.Regions);
            Assert.NotEqual(0ul, frontend.SendWithAck(VhostUserRequest.SetMemTable, table, [memfd, memfd, memfd]));
            // SET_VRING_KICK / CALL with two fds, with an fd and the no-fd bit, for a missing queue.
            var vring = new byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(vring, 0);
            Assert.NotEqual(0ul, frontend.SendWithAck(VhostUserRequest.SetVringKick, vring, [guest.Queues[0].KickFd, guest.Queues[1].KickFd]));
            BinaryPrimitives.WriteUInt64LittleEndian(vring, VringFdPayload.NoFdFlag);
            Assert.NotEqual(0ul, frontend.SendWithAck(VhostUserRequest.SetVringCall, vring, [guest.Queues[0].CallFd]));
            BinaryPrimitives.WriteUInt64LittleEndian(vring, 7);
            Assert.NotEqual(0ul, frontend.SendWithAck(VhostUserRequest.SetVringErr, vring, [guest.Queues[0].CallFd]));
            // ADD_MEM_REG with two fds; an unknown request carrying fds.
            var single = new byte[SingleRegionPayload.Length];
            SingleRegionPayload.Write(single, guest.Arena.Regions[0] with { GuestPhysAddr = 0x80_0000_0000, UserAddr = 0x7000_0000_0000 });
            Assert.NotEqual(0ul, frontend.SendWithAck(VhostUserRequest.AddMemReg, single, [memfd, memfd]));
            Assert.NotEqual(0ul, frontend.SendWithAck((VhostUserRequest)77, [], [memfd, memfd]));
            // Replace the call fds of running queues a few times (what MSI-X masking does).
            for (int i = 0; i < 3; i++) frontend.SetVringCall(1, guest.Queues[1].CallFd);
            Assert.Equal(0, guest.Blk[1].Execute(BlkRequestType.Flush, 0, []).Status);
        }
        Assert.True(target.WaitForNoFrontend(TimeSpan.FromSeconds(5)));
        // A malformed message with 8 fds attached ends the session.
        using (var frontend = VhostUserFrontend.Connect(target.SocketPath))
        {
            using var memfd = MemFd.Create("leak", 4096);
            var fds = Enumerable.Repeat(memfd.Fd, 8).ToArray();
            frontend.SendRaw(VhostUserRequest.SetVringNum, 0, [1, 2], fds);
            Assert.True(frontend.WaitForClose(TimeSpan.FromSeconds(5)));
        }
        Assert.True(target.WaitForNoFrontend(TimeSpan.FromSeconds(5)));
    }

    [Fact]
    public void RejectedAndMalformedMessagesLeakNoDescriptors()
    {
        using var target = new TestTarget(output);
        HostileSession(target);   // warm-up: lazily opened runtime fds are not leaks
        int before = OpenFds();
        for (int i = 0; i < 5; i++) HostileSession(target);
        int after = OpenFds();
        Assert.True(after <= before, $"open descriptors grew from {before} to {after}");
    }
}
