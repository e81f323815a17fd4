using System.Buffers.Binary;
using BlkTarget.Storage.Ram;
using BlkTarget.Vhost.Blk;
using BlkTarget.Vhost.Device;
using BlkTarget.Vhost.Qos;
using BlkTarget.Vhost.Queues;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlkTarget.Vhost.Tests.Qos;

/// <summary>A blk queue under a limit: the test plays the guest on a ring over a RAM disk, with the real clock.</summary>
public sealed unsafe class BlkQueueQosTests : IDisposable
{
    private readonly TestRing _ring = new(size: 64);
    private readonly Storage.IoContext _io = new();
    private readonly RamDisk _disk = new(1 << 20);
    private readonly QosLimiter _limiter = new();
    private readonly BlkQueue _queue;
    private ushort _next;

    public BlkQueueQosTests()
    {
        var context = new BlkDeviceContext("qos", _disk, new BlkOptions { ExportQos = _limiter });
        var start = new QueueStartInfo(0, _ring.CreateRing(), _ring.Memory.Memory, 1UL << VirtioBlk.FeatureFlush, -1, -1, _io);
        _queue = new BlkQueue(start, context, NullLogger.Instance);
    }

    /// <summary>Makes a request of <paramref name="type"/> available (a 512-byte read, or a flush).</summary>
    private void Offer(uint type)
    {
        ulong header = _ring.Allocate(16);
        BinaryPrimitives.WriteUInt32LittleEndian(_ring.Bytes(header, 16), type);
        ushort head = _next;
        _ring.SetDescriptor(_next++, header, 16, VirtqDescriptor.FlagNext, (ushort)_next);
        if (type == VirtioBlk.TypeIn) _ring.SetDescriptor(_next++, _ring.Allocate(512, 512), 512, VirtqDescriptor.FlagWrite | VirtqDescriptor.FlagNext, (ushort)_next);
        _ring.SetDescriptor(_next++, _ring.Allocate(1), 1, VirtqDescriptor.FlagWrite);
        _ring.MakeAvailable(head);
    }

    [Fact]
    public void A_request_over_the_limit_waits_in_its_slot_the_rest_stay_in_the_ring_and_nothing_is_allocated()
    {
        // 20 reads/s with a 50 ms burst: one token, the next one 50 ms later.
        _limiter.Set(new QosLimits { ReadIops = 20, BurstMilliseconds = 50 });
        Cycle(0);                                     // also warms up (JIT, first-use statics)
        _allocated = 0;
        Cycle(3);
        Assert.Equal(0, _allocated);
    }

    private long _allocated;

    /// <summary>Polls the queue, adding what the poll allocated on this thread to <see cref="_allocated"/>.</summary>
    private void Poll()
    {
        long before = GC.GetAllocatedBytesForCurrentThread();
        _queue.Poll();
        _allocated += GC.GetAllocatedBytesForCurrentThread() - before;
    }

    /// <summary>Three reads against one token per 50 ms, <paramref name="done"/> requests completed before.</summary>
    private void Cycle(int done)
    {
        Thread.Sleep(60);                            // a full bucket: one token
        for (int i = 0; i < 3; i++) Offer(VirtioBlk.TypeIn);
        Poll();
        Assert.Equal(done + 1, _ring.UsedIdx);
        // The second was taken and is held in its slot; the third is still in the avail ring.
        Assert.Equal(done + 2, _queue.LastAvailIdx);
        Assert.Equal(1, _queue.InFlight);
        Assert.NotEqual(0, _queue.ThrottledUntil);
        // The reactor may sleep (it wakes at ThrottledUntil) and guest kicks stay off meanwhile.
        Assert.False(_queue.PrepareToSleep());
        for (int i = 0; i < 1000; i++) Poll();
        Assert.Equal(done + 1, _ring.UsedIdx);
        Thread.Sleep(60);
        Poll();
        Assert.Equal(done + 2, _ring.UsedIdx);
        Assert.Equal(done + 3, _queue.LastAvailIdx);
        Thread.Sleep(60);
        Poll();
        Assert.Equal(done + 3, _ring.UsedIdx);
        Assert.Equal(0, _queue.ThrottledUntil);
    }

    [Fact]
    public void A_held_request_goes_as_soon_as_the_limits_are_lifted()
    {
        _limiter.Set(new QosLimits { ReadIops = 1, BurstMilliseconds = 1000 });   // the next token in a second
        Offer(VirtioBlk.TypeIn);
        Offer(VirtioBlk.TypeIn);
        _queue.Poll();
        Assert.Equal(1, _ring.UsedIdx);
        _queue.Poll();
        Assert.Equal(1, _ring.UsedIdx);
        _limiter.Set(QosLimits.None);
        _queue.Poll();
        Assert.Equal(2, _ring.UsedIdx);
    }

    [Fact]
    public void Flushes_pass_a_read_limit_and_a_stopping_queue_lets_its_held_request_go()
    {
        _limiter.Set(new QosLimits { TotalIops = 1, BurstMilliseconds = 1 });
        Offer(VirtioBlk.TypeIn);
        Offer(VirtioBlk.TypeFlush);
        Offer(VirtioBlk.TypeIn);
        _queue.Poll();
        Assert.Equal(2, _ring.UsedIdx);          // the read on the token, and the flush, which takes none
        Assert.NotEqual(0, _queue.ThrottledUntil);
        bool drained = false;
        _queue.BeginStop(() => drained = true);
        _queue.Poll();                           // a drain must end: the held read goes without its token
        Assert.Equal(3, _ring.UsedIdx);
        Assert.True(drained);
    }

    public void Dispose()
    {
        _queue.Dispose();
        _disk.Dispose();
        _io.Dispose();
        _ring.Dispose();
    }
}
