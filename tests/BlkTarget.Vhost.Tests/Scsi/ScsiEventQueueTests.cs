using BlkTarget.Storage;
using BlkTarget.Storage.Interop;
using BlkTarget.Vhost.Device;
using BlkTarget.Vhost.Queues;
using BlkTarget.Vhost.Scsi;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit;

namespace BlkTarget.Vhost.Tests.Scsi;

/// <summary>The event queue (virtio 1.2 5.6.6.3): buffers are taken only to deliver an event; struct
/// virtio_scsi_event bytes are written out literally.</summary>
public sealed class ScsiEventQueueTests : IDisposable
{
    private readonly TestRing _ring = new(size: 8);
    private readonly IoContext _io = new();
    private readonly ScsiEventSource _source = new();
    private readonly ScsiEventQueue _queue;

    public ScsiEventQueueTests()
    {
        _queue = new ScsiEventQueue(new QueueStartInfo(VirtioScsi.EventQueue, _ring.CreateRing(), _ring.Memory.Memory, 0, 5, -1, _io),
            _source, "test-scsi", NullLogger.Instance);
    }

    public void Dispose()
    {
        _queue.Dispose();
        _io.Dispose();
        _ring.Dispose();
    }

    private ulong PostBuffer(ushort head)
    {
        ulong gpa = _ring.Allocate(16);
        _ring.Bytes(gpa, 16).Fill(0xee);
        _ring.SetDescriptor(head, gpa, 16, VirtqDescriptor.FlagWrite);
        _ring.MakeAvailable(head);
        return gpa;
    }

    [Fact]
    public void Without_events_buffers_stay_with_the_driver_and_stop_is_immediate()
    {
        PostBuffer(0);
        Assert.Equal(0, _queue.Poll());
        Assert.Equal(5, _queue.KickFd);
        Assert.Equal(0, _queue.LastAvailIdx);
        bool stopped = false;
        _queue.BeginStop(() => stopped = true);
        Assert.True(stopped);
        Assert.Equal(0, _ring.UsedIdx);
    }

    [Fact]
    public void A_hot_added_lun_is_announced_as_transport_reset_rescan()
    {
        ulong gpa = PostBuffer(0);
        _source.Post(ScsiEvent.LunAdded(target: 0, lun: 3));
        Assert.Equal(1, _queue.Poll());
        // event = 1 (TRANSPORT_RESET), lun = 01 00 40 03 00 00 00 00 (target 0, LUN 3, peripheral addressing), reason = 1 (RESCAN)
        Assert.Equal(new byte[] { 1, 0, 0, 0, 1, 0, 0, 3, 0, 0, 0, 0, 1, 0, 0, 0 }, _ring.Bytes(gpa, 16).ToArray());
        Assert.Equal(1, _ring.UsedIdx);
        Assert.Equal(0u, _ring.Used(0).Id);
        Assert.Equal(16u, _ring.Used(0).Len);
    }

    [Fact]
    public void A_capacity_change_carries_asc_and_ascq_in_the_reason()
    {
        ulong gpa = PostBuffer(0);
        _source.Post(ScsiEvent.ParameterChanged(2, 1, SenseCode.CapacityDataHasChanged));
        _queue.Poll();
        // event = 3 (PARAM_CHANGE), target 2 LUN 1, reason = 0x2a | 0x09 << 8
        Assert.Equal(new byte[] { 3, 0, 0, 0, 1, 2, 0, 1, 0, 0, 0, 0, 0x2a, 0x09, 0, 0 }, _ring.Bytes(gpa, 16).ToArray());
    }

    [Fact]
    public void Events_wait_for_a_buffer_and_an_overflow_is_reported_as_missed()
    {
        for (int i = 0; i < ScsiEventSource.Capacity + 1; i++) _source.Post(ScsiEvent.LunRemoved(0, (ushort)i));
        Assert.Equal(0, _queue.Poll());
        Assert.False(_queue.PrepareToSleep());     // nothing to deliver into: sleep until the driver kicks
        ulong gpa = PostBuffer(0);
        Assert.Equal(1, _queue.Poll());
        // REMOVED for LUN 0, with VIRTIO_SCSI_T_EVENTS_MISSED (0x80000000) set: one was dropped.
        Assert.Equal(new byte[] { 1, 0, 0, 0x80, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0 }, _ring.Bytes(gpa, 16).ToArray());
        ulong second = PostBuffer(1);
        Assert.Equal(1, _queue.Poll());
        Assert.Equal(new byte[] { 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 2, 0, 0, 0 }, _ring.Bytes(second, 16).ToArray());
    }

    [Fact]
    public void A_lun_above_255_is_written_with_flat_addressing()
    {
        ulong gpa = PostBuffer(0);
        _source.Post(ScsiEvent.LunRemoved(target: 1, lun: 0x123));
        _queue.Poll();
        // lun = 01 01 41 23: flat addressing (40h) with LUN 123h, as REPORT LUNS and QEMU encode it
        Assert.Equal(new byte[] { 1, 0, 0, 0, 1, 1, 0x41, 0x23, 0, 0, 0, 0, 2, 0, 0, 0 }, _ring.Bytes(gpa, 16).ToArray());
    }

    [Fact]
    public void A_device_readable_event_buffer_stops_the_queue()
    {
        ulong gpa = _ring.Allocate(16);
        _ring.SetDescriptor(0, gpa, 16);
        _ring.MakeAvailable(0);
        _source.Post(ScsiEvent.LunAdded(0, 1));
        _queue.Poll();
        Assert.NotNull(_queue.BrokenReason);
        Assert.Equal(0, _ring.UsedIdx);
    }

    [Fact]
    public void With_no_event_queue_running_events_are_dropped()
    {
        var source = new ScsiEventSource();
        source.Post(ScsiEvent.LunAdded(0, 1));
        Assert.False(source.Pending);
    }
}
