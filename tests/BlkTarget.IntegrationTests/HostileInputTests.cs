using System.Buffers.Binary;
using BlkTarget.Vhost.Frontend;
using BlkTarget.Storage.Interop;
using BlkTarget.Vhost.Protocol;
using BlkTarget.Vhost.Queues;
using Xunit.Abstractions;
using static BlkTarget.IntegrationTests.TestData;

namespace BlkTarget.IntegrationTests;

/// <summary>
/// A frontend that breaks the rules, over the protocol and through the rings. The target must refuse, close
/// that one connection or stop that one queue, and go on serving everything else.
/// </summary>
public sealed unsafe class HostileInputTests(ITestOutputHelper output)
{
    private static readonly TimeSpan CloseTimeout = TimeSpan.FromSeconds(5);

    /// <summary>A fresh frontend can still connect and do I/O.</summary>
    private static void AssertServerStillServes(TestTarget target)
    {
        Assert.True(target.WaitForNoFrontend(CloseTimeout), "the hostile session did not end");
        using var guest = TestGuest.Connect(target.SocketPath);
        var buffer = guest.Allocate(4096);
        Fill(buffer.Span, seed: 123);
        Assert.Equal(Ok, guest.Blk[0].Execute(BlkRequestType.Out, 0, [buffer]).Status);
        buffer.Span.Clear();
        Assert.Equal(Ok, guest.Blk[0].Execute(BlkRequestType.In, 0, [buffer]).Status);
        Assert.Equal(Random(4096, seed: 123), buffer.Span.ToArray());
    }

    // ---- protocol messages ----

    [Fact]
    public void UnknownRequestWithNeedReplyGetsAFailureAckAndTheSessionGoesOn()
    {
        using var target = new TestTarget(output);
        using var guest = TestGuest.Connect(target.SocketPath);
        Assert.True(guest.Frontend.ReplyAckNegotiated);
        Assert.NotEqual(0ul, guest.Frontend.SendWithAck((VhostUserRequest)999, [1, 2, 3, 4]));
        Assert.NotEqual(0ul, guest.Frontend.SendWithAck(VhostUserRequest.SetLogBase, new byte[16]));
        // Same connection still answers and does I/O.
        Assert.Equal(guest.Frontend.OfferedFeatures, guest.Frontend.GetFeatures());
        Assert.Equal(Ok, guest.Blk[0].Execute(BlkRequestType.Flush, 0, []).Status);
    }

    [Fact]
    public void UnknownRequestWithoutNeedReplyClosesOnlyThatConnection()
    {
        using var target = new TestTarget(output);
        using (var frontend = VhostUserFrontend.Connect(target.SocketPath))
        {
            frontend.SendRaw((VhostUserRequest)999, 0, []);
            Assert.True(frontend.WaitForClose(CloseTimeout));
        }
        AssertServerStillServes(target);
    }

    [Fact]
    public void UnknownRequestWithNeedReplyButNoReplyAckIsIgnoredAndTheSessionGoesOn()
    {
        using var target = new TestTarget(output);
        var options = new VhostUserFrontendOptions
        {
            ProtocolFeatures = VhostUserFrontendOptions.SupportedProtocolFeatures & ~ProtocolFeatures.ReplyAck,
            ReplyTimeout = TimeSpan.FromMilliseconds(300),
        };
        using var frontend = VhostUserFrontend.Connect(target.SocketPath, options);
        Assert.Throws<TimeoutException>(() => frontend.SendWithAck((VhostUserRequest)999, []));
        Assert.False(frontend.WaitForClose(TimeSpan.FromMilliseconds(200)), "the target closed the connection");
        Assert.Equal(frontend.OfferedFeatures, frontend.GetFeatures());
    }

    public static TheoryData<string> MalformedMessages =>
    [
        "SET_VRING_NUM with 4 bytes",
        "SET_FEATURES with 2 bytes",
        "SET_VRING_KICK with no payload",
        "SET_MEM_TABLE claiming 9 regions",
        "SET_MEM_TABLE claiming more regions than it carries",
        "GET_VRING_BASE for a missing queue",
        "GET_CONFIG without a header",
        "payload size beyond 4096",
        "bad version bits",
        "header cut short",
    ];

    [Theory]
    [MemberData(nameof(MalformedMessages))]
    public void MalformedMessageClosesTheConnectionButTheServerKeepsServing(string message)
    {
        using var target = new TestTarget(output);
        using (var frontend = VhostUserFrontend.Connect(target.SocketPath))
        {
            using var memfd = MemFd.Create("hostile", 1 << 20);
            switch (message)
            {
                case "SET_VRING_NUM with 4 bytes":
                    frontend.SendRaw(VhostUserRequest.SetVringNum, MessageHeader.NeedReplyFlag, [0, 0, 0, 0]);
                    break;
                case "SET_FEATURES with 2 bytes":
                    frontend.SendRaw(VhostUserRequest.SetFeatures, 0, [1, 0]);
                    break;
                case "SET_VRING_KICK with no payload":
                    frontend.SendRaw(VhostUserRequest.SetVringKick, 0, [], [memfd.Fd]);
                    break;
                case "SET_MEM_TABLE claiming 9 regions":
                {
                    var payload = new byte[8 + 9 * 32];
                    BinaryPrimitives.WriteUInt32LittleEndian(payload, 9);
                    frontend.SendRaw(VhostUserRequest.SetMemTable, MessageHeader.NeedReplyFlag, payload, [memfd.Fd, memfd.Fd]);
                    break;
                }
                case "SET_MEM_TABLE claiming more regions than it carries":
                {
                    var payload = new byte[8 + 32];
                    BinaryPrimitives.WriteUInt32LittleEndian(payload, 3);
                    frontend.SendRaw(VhostUserRequest.SetMemTable, MessageHeader.NeedReplyFlag, payload, [memfd.Fd]);
                    break;
                }
                case "GET_VRING_BASE for a missing queue":
                {
                    var payload = new byte[8];
                    new VringState(200, 0).Write(payload);
                    frontend.SendRaw(VhostUserRequest.GetVringBase, 0, payload);
                    break;
                }
                case "GET_CONFIG without a header":
                    frontend.SendRaw(VhostUserRequest.GetConfig, 0, [0, 0, 0, 0]);
                    break;
                case "payload size beyond 4096":
                {
                    var header = new byte[MessageHeader.Length];
                    new MessageHeader(VhostUserRequest.SetFeatures, MessageHeader.Version, 5000).Write(header);
                    frontend.SendRawBytes(header);
                    break;
                }
                case "bad version bits":
                    frontend.SendRaw(VhostUserRequest.GetFeatures, 0x2, []);
                    break;
                case "header cut short":
                    frontend.SendRawBytes([1, 0, 0, 0, 1]);
                    frontend.Connection.Socket.Shutdown(System.Net.Sockets.SocketShutdown.Send);
                    break;
                default:
                    throw new ArgumentException(message);
            }
            Assert.True(frontend.WaitForClose(CloseTimeout), $"the target kept the connection open after: {message}");
        }
        AssertServerStillServes(target);
    }

    [Fact]
    public void SetMemTableWithFewerDescriptorsThanRegionsIsRefusedWithAFailureAck()
    {
        using var target = new TestTarget(output);
        using var guest = TestGuest.Connect(target.SocketPath, start: false, regions: 2);
        var payload = new byte[8 + 2 * 32];
        MemoryTablePayload.Write(payload, guest.Arena.Regions);
        Assert.NotEqual(0ul, guest.Frontend.SendWithAck(VhostUserRequest.SetMemTable, payload, [guest.Arena.MemoryFd.Fd]));
        // Nothing was mapped; a correct start afterwards works.
        guest.Start();
        Assert.Equal(Ok, guest.Blk[0].Execute(BlkRequestType.Flush, 0, []).Status);
    }

    [Fact]
    public void OverlappingMemoryRegionsAreRefused()
    {
        using var target = new TestTarget(output);
        using var guest = TestGuest.Connect(target.SocketPath, start: false);
        var region = guest.Arena.Regions[0];
        var payload = new byte[8 + 2 * 32];
        MemoryTablePayload.Write(payload, [region, region with { UserAddr = region.UserAddr + (1UL << 40) }]);
        int fd = guest.Arena.MemoryFd.Fd;
        Assert.NotEqual(0ul, guest.Frontend.SendWithAck(VhostUserRequest.SetMemTable, payload, [fd, fd]));
    }

    [Fact]
    public void RingAddressesOutsideGuestMemoryAreRefusedWithoutHarm()
    {
        using var target = new TestTarget(output);
        using var guest = TestGuest.Connect(target.SocketPath, start: false);
        var frontend = guest.Frontend;
        frontend.SetFeatures(frontend.FeaturesToAck);
        frontend.SetMemory(guest.Arena);
        var q = guest.SplitQueue(0);
        frontend.SetVringNum(0, (uint)q.Size);
        frontend.SetVringBase(0, 0);
        frontend.SetVringAddr(q.Address with { DescUserAddr = 0xdead_0000_0000 });
        frontend.SetVringKick(0, q.KickFd);
        frontend.SetVringCall(0, q.CallFd);
        // The ring becomes runnable when enabled, and cannot start.
        var error = Assert.Throws<VhostUserFrontendException>(() => frontend.SetVringEnable(0, true));
        Assert.Equal(VhostUserRequest.SetVringEnable, error.Request);
        Assert.True(target.Log.Contains("outside guest memory"));
        // A correct start sequence afterwards works.
        guest.Start();
        Assert.Equal(Ok, guest.Blk[0].Execute(BlkRequestType.Flush, 0, []).Status);
    }

    [Theory]
    [InlineData(0u)]
    [InlineData(100u)]
    [InlineData(65536u)]
    public void InvalidQueueSizesAreRefused(uint size)
    {
        using var target = new TestTarget(output);
        using var guest = TestGuest.Connect(target.SocketPath, start: false);
        Assert.Throws<VhostUserFrontendException>(() => guest.Frontend.SetVringNum(0, size));
        Assert.Throws<VhostUserFrontendException>(() => guest.Frontend.SetVringNum(5, 128));
    }

    [Fact]
    public void KickDescriptorCountDisagreeingWithTheNoFdBitIsRefused()
    {
        using var target = new TestTarget(output);
        using var guest = TestGuest.Connect(target.SocketPath, start: false);
        var payload = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(payload, 0 | VringFdPayload.NoFdFlag);
        Assert.NotEqual(0ul, guest.Frontend.SendWithAck(VhostUserRequest.SetVringKick, payload, [guest.Queues[0].KickFd]));
        BinaryPrimitives.WriteUInt64LittleEndian(payload, 0);
        Assert.NotEqual(0ul, guest.Frontend.SendWithAck(VhostUserRequest.SetVringCall, payload));
        guest.Start();
        Assert.Equal(Ok, guest.Blk[0].Execute(BlkRequestType.Flush, 0, []).Status);
    }

    // ---- descriptor chains ----

    public static TheoryData<string> HostileChains =>
    [
        "data buffer outside guest memory",
        "data buffer wrapping the address space",
        "header outside guest memory",
        "chain looping back to its head",
        "next index beyond the table",
        "no writable status byte",
        "readable buffer after a writable one",
        "indirect table outside guest memory",
        "indirect table length not a multiple of 16",
        "nested indirect table",
        "indirect descriptor with NEXT",
        "head index beyond the table",
        "avail index running ahead by more than the queue size",
    ];

    [Theory]
    [MemberData(nameof(HostileChains))]
    public void HostileDescriptorChainBreaksOnlyItsQueue(string kind)
    {
        using var target = new TestTarget(output);
        using var guest = TestGuest.Connect(target.SocketPath, queues: 2, queueSize: 32);
        var q = guest.SplitQueue(0);
        var header = guest.Allocate(16, 16);
        BinaryPrimitives.WriteUInt32LittleEndian(header.Span, (uint)BlkRequestType.In);
        var data = guest.Allocate(4096);
        var status = guest.Allocate(1, 1);
        status.Span[0] = 0xff;
        const ushort R = 0, W = VirtqDescriptor.FlagWrite, N = VirtqDescriptor.FlagNext, I = VirtqDescriptor.FlagIndirect;
        VirtqDescriptor Hdr() => new() { Addr = header.Gpa, Len = 16, Flags = R };
        VirtqDescriptor Data(ulong addr, uint len = 4096, ushort flags = W) => new() { Addr = addr, Len = len, Flags = flags };
        VirtqDescriptor Status(ushort extra = 0, ushort next = 0) => new() { Addr = status.Gpa, Len = 1, Flags = (ushort)(W | extra), Next = next };
        var descriptors = (VirtqDescriptor*)q.DescriptorTable.Pointer;
        ushort head;
        switch (kind)
        {
            case "data buffer outside guest memory":
                Assert.True(q.TryAddRaw([Hdr(), Data(0xdead_0000_0000), Status()], 1, out _));
                break;
            case "data buffer wrapping the address space":
                Assert.True(q.TryAddRaw([Hdr(), Data(ulong.MaxValue - 100), Status()], 1, out _));
                break;
            case "header outside guest memory":
                Assert.True(q.TryAddRaw([Data(0x10, 16, R), Data(data.Gpa), Status()], 1, out _));
                break;
            case "chain looping back to its head":
                Assert.True(q.TryAddRaw([Hdr(), Data(data.Gpa), Status()], 1, out head));
                // Point the status descriptor (the chain's last) back at the head.
                ushort last = descriptors[descriptors[head].Next].Next;
                descriptors[last].Flags |= N;
                descriptors[last].Next = head;
                break;
            case "next index beyond the table":
                Assert.True(q.TryAddRaw([Hdr(), Data(data.Gpa), Status(N, 1000)], 1, out _));
                break;
            case "no writable status byte":
                Assert.True(q.TryAddRaw([Hdr(), Data(data.Gpa, 4096, R)], 1, out _));
                break;
            case "readable buffer after a writable one":
                Assert.True(q.TryAddRaw([Hdr(), Status(), Data(data.Gpa, 4096, R)], 1, out _));
                break;
            case "indirect table outside guest memory":
                Assert.True(q.TryAddRaw([new() { Addr = 0xdead_0000_0000, Len = 48, Flags = I }], 1, out _));
                break;
            case "indirect table length not a multiple of 16":
            {
                var table = IndirectTable(guest, Hdr(), Data(data.Gpa), Status());
                Assert.True(q.TryAddRaw([new() { Addr = table.Gpa, Len = 40, Flags = I }], 1, out _));
                break;
            }
            case "nested indirect table":
            {
                var inner = IndirectTable(guest, Hdr(), Data(data.Gpa), Status());
                var outer = IndirectTable(guest, new VirtqDescriptor { Addr = inner.Gpa, Len = 48, Flags = I });
                Assert.True(q.TryAddRaw([new() { Addr = outer.Gpa, Len = 16, Flags = I }], 1, out _));
                break;
            }
            case "indirect descriptor with NEXT":
            {
                var table = IndirectTable(guest, Hdr(), Data(data.Gpa), Status());
                Assert.True(q.TryAddRaw([new() { Addr = table.Gpa, Len = 48, Flags = I }, Status()], 1, out _));
                break;
            }
            case "head index beyond the table":
            {
                Assert.True(q.TryAddRaw([Hdr(), Data(data.Gpa), Status()], 1, out _));
                ushort* availRing = (ushort*)(q.AvailRing.Pointer + 4);
                availRing[(q.AvailIdx - 1) & (q.Size - 1)] = 1000;
                break;
            }
            case "avail index running ahead by more than the queue size":
            {
                ushort* availIdx = (ushort*)(q.AvailRing.Pointer + 2);
                Volatile.Write(ref *availIdx, (ushort)(q.Size + 5));
                EventFd.Signal(q.KickFd);
                break;
            }
            default:
                throw new ArgumentException(kind);
        }
        if (!kind.StartsWith("avail index", StringComparison.Ordinal)) q.Kick();

        // The hostile request is never completed, and the status byte nowhere written.
        Assert.False(q.WaitForUsed(200), $"the target completed a request with a {kind}");
        Assert.Equal(0xff, status.Span[0]);
        Assert.True(SpinWait.SpinUntil(() => target.Log.Contains("guest error"), 2000), "the target did not report the broken queue");

        // The other queue of the same device goes on working.
        var other = guest.Blk[1];
        var buffer = guest.Allocate(4096);
        Fill(buffer.Span, seed: 5);
        Assert.Equal(Ok, other.Execute(BlkRequestType.Out, 64, [buffer]).Status);
        buffer.Span.Clear();
        Assert.Equal(Ok, other.Execute(BlkRequestType.In, 64, [buffer]).Status);
        Assert.Equal(Random(4096, seed: 5), buffer.Span.ToArray());

        // Stopping the broken queue is answered (nothing is in flight), and after a reset it works again.
        guest.Stop();
        guest.ResetQueues();
        guest.Start();
        Assert.Equal(Ok, guest.Blk[0].Execute(BlkRequestType.In, 64, [buffer]).Status);
        Assert.Equal(Random(4096, seed: 5), buffer.Span.ToArray());
    }

    private static GuestBuffer IndirectTable(TestGuest guest, params VirtqDescriptor[] entries)
    {
        var table = guest.Allocate((uint)(entries.Length * sizeof(VirtqDescriptor)), 16);
        var p = (VirtqDescriptor*)table.Pointer;
        for (int i = 0; i < entries.Length; i++)
        {
            p[i] = entries[i];
            if (i < entries.Length - 1)
            {
                p[i].Flags |= VirtqDescriptor.FlagNext;
                p[i].Next = (ushort)(i + 1);
            }
        }
        return table;
    }
}
