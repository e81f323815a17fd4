using System.Runtime.InteropServices;

namespace BlkTarget.Storage.Tests.Conformance;

/// <summary>
/// The fault and shutdown paths of io_uring channels: a channel whose completion handling threw stops completing
/// requests but keeps every slot (and the buffers it points at) until the kernel has returned it; a channel
/// disposed with requests in flight leaves its I/O context only after the last one, so its index is never handed
/// to a later channel while a completion for it can still arrive.
/// </summary>
public sealed unsafe class ChannelFaultTests : IDisposable
{
    private const int Requests = 16;
    private readonly BackendFactory _factory = new();

    private sealed class ThrowingSink : IBlockCompletionSink
    {
        public int Completed;
        public int CompletedAfterFault;
        public Exception? Fault;

        public void Complete(ulong tag, BlockStatus status)
        {
            if (Fault is not null) CompletedAfterFault++;
            if (++Completed == 1) throw new InvalidOperationException("bug in a completion handler");
        }

        public void ChannelFaulted(Exception error) => Fault = error;
    }

    [Theory]
    [InlineData("file-direct")]
    [InlineData("image-direct")]
    public void A_faulted_channel_completes_nothing_more_and_keeps_its_slots_until_the_kernel_returns_them(string kind)
    {
        using var device = _factory.Create(kind);
        using var io = new IoContext(64);
        var sink = new ThrowingSink();
        var channel = device.OpenChannel(io, sink, Requests);
        using var buffers = new Buffers();
        buffers.SubmitAll(channel, BlockOperation.Write);
        for (int round = 0; round < 100_000 && (channel.InFlight > 0 || io.InFlight > 0); round++)
        {
            io.Poll();
            Assert.True(channel.InFlight >= io.InFlight, $"the channel let go of slots while the kernel still holds {io.InFlight} of its operations");
        }
        Assert.NotNull(sink.Fault);
        Assert.Equal(0, sink.CompletedAfterFault);
        Assert.Equal(0, channel.InFlight);
        channel.Dispose();
        // The I/O context keeps serving other channels.
        using var driver = new ChannelDriver(device);
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, 0, new byte[4096]));
    }

    [Theory]
    [InlineData("file-direct")]
    [InlineData("image-direct")]
    public void A_channel_disposed_with_requests_in_flight_leaves_only_after_the_last_completion(string kind)
    {
        using var device = _factory.Create(kind);
        using var io = new IoContext(64);
        var sink = new ThrowingSink { Completed = 1 };
        var channel = device.OpenChannel(io, sink, Requests);
        using var buffers = new Buffers();
        buffers.SubmitAll(channel, BlockOperation.Read);
        io.Poll();   // submitted to the kernel
        channel.Dispose();
        for (int round = 0; round < 100_000 && io.InFlight > 0; round++) io.Poll();
        Assert.Equal(0, io.InFlight);
        Assert.Equal(0, channel.InFlight);
        // Its index is free again only now; a new channel works on the same context.
        var next = new Recorder();
        using var other = device.OpenChannel(io, next, 4);
        other.Submit(new BlockRequest { Operation = BlockOperation.Read, Offset = 0, Length = 4096, Iov = buffers.Iovs, IovCount = 1, Tag = 42 });
        for (int round = 0; round < 100_000 && next.Seen.Count == 0; round++) io.Poll();
        Assert.Equal([(42UL, BlockStatus.Ok)], next.Seen);
    }

    [Fact]
    public void A_cancelled_channel_issues_nothing_more_for_its_requests()
    {
        // A write to unallocated clusters waits for the (held) metadata thread; the queue gives up on it; once the
        // allocation is done the data must not be written after all.
        using var device = (Storage.Image.ImageDisk)_factory.Create("image-direct");
        using var gate = new ManualResetEventSlim();
        device.Worker.BeforeJob = () => gate.Wait(TimeSpan.FromSeconds(20));
        using var io = new IoContext(64);
        var sink = new ThrowingSink { Completed = 1 };
        var channel = device.OpenChannel(io, sink, Requests);
        using var buffers = new Buffers();
        buffers.SubmitAll(channel, BlockOperation.Write);
        io.Poll();
        channel.Cancel();
        gate.Set();
        for (int round = 0; round < 100_000 && (channel.InFlight > 0 || io.InFlight > 0); round++) io.Poll();
        Assert.Equal(0, channel.InFlight);
        Assert.Equal(1, sink.Completed);   // nothing completed after the cancel
        channel.Dispose();
        device.Worker.BeforeJob = null;
        using var driver = new ChannelDriver(device);
        var back = new byte[Requests * 4096];
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, 0, back));
        Assert.True(back.AsSpan().IndexOfAnyExcept((byte)0) < 0, "a cancelled write reached the disk");
    }

    /// <summary>One aligned 4 KiB buffer and iovec per request.</summary>
    private sealed class Buffers : IDisposable
    {
        private readonly byte* _data = Fill((byte*)NativeMemory.AlignedAlloc(Requests * 4096, 4096));

        private static byte* Fill(byte* p)
        {
            new Span<byte>(p, Requests * 4096).Fill(0xC3);
            return p;
        }
        public readonly IoVec* Iovs = (IoVec*)NativeMemory.Alloc(Requests, (nuint)sizeof(IoVec));

        /// <summary>Submits <see cref="Requests"/> requests of one block each, request i at block i, tag i.</summary>
        public void SubmitAll(IBlockChannel channel, BlockOperation operation)
        {
            for (int i = 0; i < Requests; i++)
            {
                Iovs[i] = new IoVec(_data + i * 4096, 4096);
                channel.Submit(new BlockRequest { Operation = operation, Offset = (ulong)i * 4096, Length = 4096, Iov = Iovs + i, IovCount = 1, Tag = (ulong)i });
            }
        }

        public void Dispose()
        {
            NativeMemory.AlignedFree(_data);
            NativeMemory.Free(Iovs);
        }
    }

    private sealed class Recorder : IBlockCompletionSink
    {
        public readonly List<(ulong, BlockStatus)> Seen = [];
        public void Complete(ulong tag, BlockStatus status) => Seen.Add((tag, status));
        public void ChannelFaulted(Exception error) => throw new InvalidOperationException("unexpected fault", error);
    }

    public void Dispose() => _factory.Dispose();
}
