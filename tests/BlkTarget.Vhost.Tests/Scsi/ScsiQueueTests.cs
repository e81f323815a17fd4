using System.Buffers.Binary;
using BlkTarget.Storage;
using BlkTarget.Storage.Ram;
using BlkTarget.Vhost.Device;
using BlkTarget.Vhost.Queues;
using BlkTarget.Vhost.Scsi;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlkTarget.Vhost.Tests.Scsi;

/// <summary>A backend whose every request fails with an I/O error.</summary>
internal sealed class FailingDisk(ulong size) : IBlockDevice
{
    public BlockDeviceInfo Info { get; } = new(size, 512, false, true, true, false);

    public IBlockChannel OpenChannel(IoContext io, IBlockCompletionSink sink, int maxInFlight) => new Channel(sink);

    public void Dispose() { }

    private sealed class Channel(IBlockCompletionSink sink) : IBlockChannel
    {
        public int InFlight => 0;
        public void Submit(in BlockRequest request) => sink.Complete(request.Tag, BlockStatus.IoError);
        public void Dispose() { }
    }
}

/// <summary>The virtio-scsi queues: request framing and hostile layouts, backend errors, control and event
/// queues, config space, and task management with I/O in flight.</summary>
public sealed unsafe class ScsiQueueTests
{
    [Fact]
    public void Header_and_response_may_span_descriptors_and_data_in_may_share_the_response_buffer()
    {
        using var h = new ScsiHarness();
        var data = new byte[1024];
        new Random(5).NextBytes(data);
        h.Run(Cdbs.Rw10(ScsiOp.Write10, 3, 2), dataOut: data, layout: new ScsiHarness.Layout { SplitHeaderAt = 7 }).AssertGood();
        var r = h.Run(Cdbs.Rw10(ScsiOp.Read10, 3, 2), dataIn: 1024, layout: new ScsiHarness.Layout { SplitHeaderAt = 20, DataInWithResponse = true });
        r.AssertGood();
        Assert.Equal(data, r.Data);
        Assert.Equal(108u + 1024, r.UsedLength);
    }

    [Fact]
    public void A_request_header_shorter_than_the_cdb_size_fails_the_request()
    {
        using var h = new ScsiHarness();
        var r = h.Run(Cdbs.Make(6, ScsiOp.TestUnitReady), layout: new ScsiHarness.Layout { RequestLength = 30 });
        Assert.Equal(VirtioScsi.Failure, r.Response);
        Assert.Equal(0, r.SenseLength);
        Assert.Null(h.Queue.BrokenReason);
    }

    [Fact]
    public void A_response_buffer_shorter_than_the_response_struct_fails_the_request()
    {
        using var h = new ScsiHarness();
        var r = h.Run(Cdbs.Make(6, ScsiOp.TestUnitReady), layout: new ScsiHarness.Layout { ResponseLength = 40 });
        Assert.Equal(VirtioScsi.Failure, r.Response);
        Assert.Equal(40u, r.UsedLength);
        // The queue keeps working.
        h.Run(Cdbs.Make(6, ScsiOp.TestUnitReady)).AssertGood();
    }

    [Fact]
    public void A_request_with_no_room_for_a_response_breaks_only_its_queue()
    {
        using var h = new ScsiHarness();
        ulong req = h.Ring.Allocate(64);
        ScsiHarness.Lun(0, 0).CopyTo(h.Ring.Bytes(req, 8));
        ulong tiny = h.Ring.Allocate(8);
        var (completed, _) = h.Submit([(req, 51, false), (tiny, 8, true)]);
        Assert.False(completed);
        Assert.NotNull(h.Queue.BrokenReason);

        using var h2 = new ScsiHarness();
        Assert.False(h2.Submit([(req, 51, false)]).Completed);
        Assert.NotNull(h2.Queue.BrokenReason);
    }

    [Fact]
    public void A_cdb_longer_than_the_configured_cdb_size_is_refused()
    {
        using var h = new ScsiHarness();
        Assert.True(h.Device.Config.Write(ScsiConfigSpace.OffCdbSize, BitConverter.GetBytes(6u)));
        var r = h.Run(Cdbs.Rw10(ScsiOp.Read10, 0, 1), dataIn: 512, layout: new ScsiHarness.Layout { RequestLength = 19 + 6 });
        r.AssertCheck(SenseCode.InvalidFieldInCdb);
        h.Run(Cdbs.Make(6, ScsiOp.TestUnitReady), layout: new ScsiHarness.Layout { RequestLength = 19 + 6 }).AssertGood();
    }

    [Fact]
    public void A_smaller_configured_sense_size_truncates_the_sense()
    {
        using var h = new ScsiHarness();
        Assert.True(h.Device.Config.Write(ScsiConfigSpace.OffSenseSize, BitConverter.GetBytes(8u)));
        var r = h.Run(Cdbs.Make(6, 0x04), layout: new ScsiHarness.Layout { ResponseLength = 12 + 8 });
        Assert.Equal(ScsiStatus.CheckCondition, r.Status);
        Assert.Equal(8, r.SenseLength);
        Assert.Equal(SenseKey.IllegalRequest, r.Key);
    }

    [Fact]
    public void Backend_io_errors_become_medium_errors()
    {
        using var h = new ScsiHarness(d => { var disk = new FailingDisk(1 << 20); d.Add(disk); return [new ScsiLunDefinition(0, 0, disk, "BAD")]; });
        h.Run(Cdbs.Rw10(ScsiOp.Read10, 0, 1), dataIn: 512).AssertCheck(SenseCode.UnrecoveredReadError);
        h.Run(Cdbs.Rw10(ScsiOp.Write10, 0, 1), dataOut: new byte[512]).AssertCheck(SenseCode.WriteError);
        h.Run(Cdbs.Make(10, ScsiOp.SynchronizeCache10)).AssertCheck(SenseCode.WriteError);
        var r = h.Run(Cdbs.Rw10(ScsiOp.Read10, 0, 1), dataIn: 512);
        Assert.Equal(512u, r.Resid);
        Assert.Equal(108u, r.UsedLength);
    }

    [Fact]
    public void Sense_for_backend_statuses()
    {
        Assert.Equal(SenseCode.LbaOutOfRange, ScsiRequestQueue.SenseFor(BlockStatus.OutOfRange, BlockOperation.Read));
        Assert.Equal(SenseCode.WriteProtected, ScsiRequestQueue.SenseFor(BlockStatus.ReadOnly, BlockOperation.Write));
        Assert.Equal(SenseCode.SpaceAllocationFailed, ScsiRequestQueue.SenseFor(BlockStatus.NoSpace, BlockOperation.Write));
        Assert.Equal(SenseCode.WriteError, ScsiRequestQueue.SenseFor(BlockStatus.IoError, BlockOperation.WriteZeroes));
    }

    [Theory]
    [InlineData(ScsiOp.Read10)]
    [InlineData(ScsiOp.Write10)]
    [InlineData(ScsiOp.WriteSame16)]
    public void Reads_and_writes_allocate_nothing_per_request(byte opcode)
    {
        // WRITE SAME(16) with a pattern: 5000 blocks from LBA 1 of a 4 MiB LUN, three pieces.
        using var h = new ScsiHarness(disks =>
        {
            var disk = new RamDisk(4 << 20);
            disks.Add(disk);
            return [new ScsiLunDefinition(0, 0, disk, "SERIAL-0")];
        });
        ulong req = h.Ring.Allocate(64);
        var r = h.Ring.Bytes(req, 51);
        r.Clear();
        ScsiHarness.Lun(0, 0).CopyTo(r);
        (opcode == ScsiOp.WriteSame16 ? Cdbs.Rw16(opcode, 1, 5000) : Cdbs.Rw10(opcode, 8, 8)).CopyTo(r[19..]);
        ulong data = h.Ring.Allocate(4096);
        h.Ring.Bytes(data, 4096).Fill(0xA5);
        ulong resp = h.Ring.Allocate(108);
        bool read = opcode == ScsiOp.Read10;
        const ushort head = 100;
        h.Ring.SetDescriptor(100, req, 51, VirtqDescriptor.FlagNext, 101);
        if (read)
        {
            h.Ring.SetDescriptor(101, resp, 108, VirtqDescriptor.FlagWrite | VirtqDescriptor.FlagNext, 102);
            h.Ring.SetDescriptor(102, data, 4096, VirtqDescriptor.FlagWrite);
        }
        else
        {
            h.Ring.SetDescriptor(101, data, 4096, VirtqDescriptor.FlagNext, 102);
            h.Ring.SetDescriptor(102, resp, 108, VirtqDescriptor.FlagWrite);
        }
        h.Ring.MakeAvailable(head);
        h.Queue.Poll();                                     // warm-up (JIT, first-use statics)
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 20; i++)
        {
            h.Ring.MakeAvailable(head);
            h.Queue.Poll();
        }
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
        Assert.Equal(21, h.Ring.UsedIdx);
        Assert.Equal(ScsiStatus.Good, h.Ring.Bytes(resp, 12)[10]);
        Assert.Equal(VirtioScsi.Ok, h.Ring.Bytes(resp, 12)[11]);
    }

    [Fact]
    public void Swapping_the_call_fd_of_a_running_queue_signals_the_new_fd_once()
    {
        using var h = new ScsiHarness();
        using var call = BlkTarget.Storage.Interop.EventFd.Create();
        h.Queue.SetCallFd(call.Fd);
        Assert.Equal(1UL, BlkTarget.Storage.Interop.EventFd.Drain(call.Fd));
        h.Queue.SetCallFd(-1);
        Assert.Equal(0UL, BlkTarget.Storage.Interop.EventFd.Drain(call.Fd));
    }

    // ---- config space and device ----

    [Fact]
    public void Config_space_reports_queues_limits_and_addressing_and_lets_the_driver_set_sense_and_cdb_size()
    {
        using var h = new ScsiHarness(d =>
        {
            var a = new RamDisk(1 << 20);
            var b = new RamDisk(1 << 20);
            d.Add(a);
            d.Add(b);
            return [new ScsiLunDefinition(0, 0, a, "A"), new ScsiLunDefinition(2, 5, b, "B")];
        }, requestQueues: 3);
        var config = h.Device.Config;
        var bytes = new byte[ScsiConfigSpace.Size];
        config.Read(0, bytes);
        Assert.Equal(3u, BinaryPrimitives.ReadUInt32LittleEndian(bytes));
        Assert.Equal(126u, BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(4)));
        Assert.Equal(16u, BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(16)));
        Assert.Equal(96u, BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(20)));
        Assert.Equal(32u, BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(24)));
        Assert.Equal(0, BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(28)));
        Assert.Equal(2, BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(30)));
        Assert.Equal(5u, BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(32)));
        var beyond = new byte[16];
        config.Read(30, beyond);
        Assert.Equal(new byte[] { 2, 0, 5, 0, 0, 0 }, beyond[..6]);
        Assert.All(beyond[6..], b => Assert.Equal(0, b));

        Assert.True(config.Write(ScsiConfigSpace.OffSenseSize, BitConverter.GetBytes(32u)));
        Assert.True(config.Write(ScsiConfigSpace.OffCdbSize, BitConverter.GetBytes(16u)));
        Assert.Equal((32, 16), (config.SenseSize, config.CdbSize));
        Assert.False(config.Write(ScsiConfigSpace.OffSenseSize, BitConverter.GetBytes(253u)));
        Assert.False(config.Write(ScsiConfigSpace.OffCdbSize, BitConverter.GetBytes(2u)));
        Assert.False(config.Write(ScsiConfigSpace.OffNumQueues, BitConverter.GetBytes(9u)));
        Assert.False(config.Write(ScsiConfigSpace.OffSenseSize, new byte[2]));
        config.Reset();
        Assert.Equal((96, 32), (config.SenseSize, config.CdbSize));
    }

    [Fact]
    public void The_device_offers_two_queues_more_than_request_queues_and_only_the_features_it_implements()
    {
        var disk = new RamDisk(1 << 20);
        var device = new VirtioScsiDevice("d", [new ScsiLunDefinition(0, 0, disk, "S")], new ScsiOptions { RequestQueues = 2 }, NullLogger.Instance);
        Assert.Equal(4, device.QueueCount);
        // VERSION_1, INDIRECT_DESC, EVENT_IDX, HOTPLUG (bit 1), CHANGE (bit 2)
        Assert.Equal((1UL << 32) | (1UL << 34) | (1UL << 28) | (1UL << 29) | (1UL << 1) | (1UL << 2), device.Features);
        Assert.Throws<ArgumentException>(() => new VirtioScsiDevice("d", [], new ScsiOptions(), NullLogger.Instance));
        Assert.Throws<ArgumentException>(() => new VirtioScsiDevice("d",
            [new ScsiLunDefinition(0, 0, disk, "S"), new ScsiLunDefinition(0, 0, disk, "T")], new ScsiOptions(), NullLogger.Instance));
        disk.Dispose();
    }

    [Fact]
    public void Lun_addresses_decode_peripheral_and_flat_addressing()
    {
        Assert.Equal(new ScsiAddress(true, 3, 7), ScsiAddress.Parse([1, 3, 0, 7, 0, 0, 0, 0]));
        Assert.Equal(new ScsiAddress(true, 0, 300), ScsiAddress.Parse([1, 0, 0x41, 0x2c, 0, 0, 0, 0]));
        Assert.False(ScsiAddress.Parse([0, 0, 0, 0, 0, 0, 0, 0]).Valid);
        Assert.Equal(ushort.MaxValue, ScsiAddress.Parse([1, 0, 0xc0, 0, 0, 0, 0, 0]).Lun);
        var encoded = new byte[8];
        ScsiAddress.EncodeLun(300, encoded);
        Assert.Equal(new byte[] { 0x41, 0x2c, 0, 0, 0, 0, 0, 0 }, encoded);
    }

    // ---- control and event queues ----

    private sealed class ControlHarness : IDisposable
    {
        public readonly TestRing Ring = new(size: 16);
        public readonly ScsiControlQueue Queue;
        private ushort _next;

        public ControlHarness(ScsiDeviceContext device, IoContext io) =>
            Queue = new ScsiControlQueue(new QueueStartInfo(VirtioScsi.ControlQueue, Ring.CreateRing(), Ring.Memory.Memory, 0, -1, -1, io), device, NullLogger.Instance);

        /// <summary>Posts a control request; returns the response buffer's address.</summary>
        public ulong Post(byte[] request, int responseLength)
        {
            if (_next + 2 > Ring.Size) _next = 0;
            ulong req = Ring.Allocate((uint)Math.Max(request.Length, 1));
            request.CopyTo(Ring.Bytes(req, request.Length));
            ulong resp = Ring.Allocate((uint)responseLength);
            Ring.Bytes(resp, responseLength).Fill(0xee);
            ushort head = _next;
            Ring.SetDescriptor(_next, req, (uint)request.Length, VirtqDescriptor.FlagNext, (ushort)(_next + 1));
            Ring.SetDescriptor(_next + 1, resp, (uint)responseLength, VirtqDescriptor.FlagWrite);
            _next += 2;
            Ring.MakeAvailable(head);
            Queue.Poll();
            return resp;
        }

        public void Dispose()
        {
            Queue.Dispose();
            Ring.Dispose();
        }
    }

    private static byte[] Tmf(uint subtype, byte target = 0, ushort lun = 0)
    {
        var r = new byte[VirtioScsi.TmfRequestLength];
        BinaryPrimitives.WriteUInt32LittleEndian(r, VirtioScsi.TypeTmf);
        BinaryPrimitives.WriteUInt32LittleEndian(r.AsSpan(4), subtype);
        ScsiHarness.Lun(target, lun).CopyTo(r, 8);
        return r;
    }

    [Theory]
    [InlineData(VirtioScsi.TmfAbortTask, 0, 0, VirtioScsi.FunctionComplete)]
    [InlineData(VirtioScsi.TmfAbortTaskSet, 0, 0, VirtioScsi.FunctionComplete)]
    [InlineData(VirtioScsi.TmfClearTaskSet, 0, 0, VirtioScsi.FunctionComplete)]
    [InlineData(VirtioScsi.TmfLogicalUnitReset, 0, 0, VirtioScsi.FunctionComplete)]
    [InlineData(VirtioScsi.TmfITNexusReset, 0, 0, VirtioScsi.FunctionComplete)]
    [InlineData(VirtioScsi.TmfQueryTask, 0, 0, VirtioScsi.FunctionComplete)]
    [InlineData(VirtioScsi.TmfQueryTaskSet, 0, 0, VirtioScsi.FunctionComplete)]
    [InlineData(VirtioScsi.TmfClearAca, 0, 0, VirtioScsi.FunctionRejected)]
    [InlineData(99u, 0, 0, VirtioScsi.FunctionRejected)]
    [InlineData(VirtioScsi.TmfLogicalUnitReset, 4, 0, VirtioScsi.BadTarget)]
    [InlineData(VirtioScsi.TmfLogicalUnitReset, 0, 3, VirtioScsi.IncorrectLun)]
    [InlineData(VirtioScsi.TmfAbortTask, 0, 3, VirtioScsi.IncorrectLun)]
    public void Task_management_functions_answer_at_once_when_nothing_is_in_flight(uint subtype, byte target, ushort lun, byte expected)
    {
        using var h = new ScsiHarness();
        using var c = new ControlHarness(h.Device, h.Io);
        ulong resp = c.Post(Tmf(subtype, target, lun), 1);
        Assert.Equal(1, c.Ring.UsedIdx);
        Assert.Equal(1u, c.Ring.Used(0).Len);
        Assert.Equal(expected, c.Ring.Bytes(resp, 1)[0]);
    }

    [Fact]
    public void Asynchronous_notification_queries_report_no_events()
    {
        using var h = new ScsiHarness();
        using var c = new ControlHarness(h.Device, h.Io);
        var an = new byte[VirtioScsi.AnRequestLength];
        BinaryPrimitives.WriteUInt32LittleEndian(an, VirtioScsi.TypeAnQuery);
        ScsiHarness.Lun(0, 0).CopyTo(an, 4);
        BinaryPrimitives.WriteUInt32LittleEndian(an.AsSpan(12), 0xffff);
        ulong resp = c.Post(an, 5);
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32LittleEndian(c.Ring.Bytes(resp, 4)));
        Assert.Equal(VirtioScsi.Ok, c.Ring.Bytes(resp, 5)[4]);
        BinaryPrimitives.WriteUInt32LittleEndian(an, VirtioScsi.TypeAnSubscribe);
        resp = c.Post(an, 5);
        Assert.Equal(VirtioScsi.Ok, c.Ring.Bytes(resp, 5)[4]);
    }

    [Fact]
    public void Malformed_control_requests_fail_and_one_without_a_response_buffer_breaks_the_queue()
    {
        using var h = new ScsiHarness();
        using var c = new ControlHarness(h.Device, h.Io);
        Assert.Equal(VirtioScsi.Failure, c.Ring.Bytes(c.Post([0, 0, 0], 1), 1)[0]);                     // too short
        Assert.Equal(VirtioScsi.Failure, c.Ring.Bytes(c.Post(Tmf(0)[..10], 1), 1)[0]);                  // truncated TMF
        var unknown = Tmf(0);
        unknown[0] = 7;
        Assert.Equal(VirtioScsi.Failure, c.Ring.Bytes(c.Post(unknown, 1), 1)[0]);
        Assert.Null(c.Queue.BrokenReason);

        ulong req = c.Ring.Allocate(24);
        c.Ring.SetDescriptor(10, req, 24);
        c.Ring.MakeAvailable(10);
        c.Queue.Poll();
        Assert.NotNull(c.Queue.BrokenReason);
    }

    /// <summary>Submits a one-block READ(10) or WRITE(10) to LUN 0 that the harness's deferred backend holds;
    /// returns the response buffer (the data buffer follows it).</summary>
    private static ulong SubmitHeld(ScsiHarness h, byte opcode, uint lba)
    {
        ulong req = h.Ring.Allocate(64);
        var r = h.Ring.Bytes(req, 51);
        r.Clear();
        ScsiHarness.Lun(0, 0).CopyTo(r);
        Cdbs.Rw10(opcode, lba, 1).CopyTo(r[19..]);
        ulong resp = h.Ring.Allocate(108 + 512);
        List<(ulong, uint, bool)> chain = opcode == ScsiOp.Read10
            ? [(req, 51, false), (resp, 108, true), (resp + 108, 512, true)]
            : [(req, 51, false), (resp + 108, 512, false), (resp, 108, true)];
        Assert.False(h.Submit(chain).Completed);
        return resp;
    }

    /// <summary>Stops the request queue: it reports drained only after the backend's held completions came back.</summary>
    private static void StopDrainsOnlyAfterRelease(ScsiHarness h, DeferredDisk disk)
    {
        bool drained = false;
        h.Queue.BeginStop(() => drained = true);
        Assert.False(drained);
        disk.ReleaseCompletions();
        h.Queue.Poll();
        Assert.True(drained);
    }

    [Fact]
    public void A_lun_reset_with_io_in_flight_completes_only_after_that_io()
    {
        var disk = new DeferredDisk(1 << 20);
        using var h = new ScsiHarness(d => { d.Add(disk); return [new ScsiLunDefinition(0, 0, disk, "D")]; });
        using var c = new ControlHarness(h.Device, h.Io);
        SubmitHeld(h, ScsiOp.Read10, 0);
        Assert.Equal(1, h.Device.Luns[0].InFlight);

        ulong tmf = c.Post(Tmf(VirtioScsi.TmfLogicalUnitReset), 1);
        Assert.Equal(0, c.Ring.UsedIdx);
        ulong query = c.Post(Tmf(VirtioScsi.TmfQueryTaskSet), 1);
        Assert.Equal(VirtioScsi.FunctionSucceeded, c.Ring.Bytes(query, 1)[0]);
        Assert.Equal(1, c.Ring.UsedIdx);

        // Stopping the control queue waits for the pending reset.
        bool controlDrained = false;
        c.Queue.BeginStop(() => controlDrained = true);
        Assert.False(controlDrained);

        disk.ReleaseCompletions();
        h.Queue.Poll();
        Assert.Equal(1, h.Ring.UsedIdx);
        Assert.Equal(0, h.Device.Luns[0].InFlight);
        c.Queue.Poll();
        Assert.Equal(2, c.Ring.UsedIdx);
        Assert.Equal(VirtioScsi.FunctionComplete, c.Ring.Bytes(tmf, 1)[0]);
        Assert.True(controlDrained);
    }

    [Fact]
    public void Request_queue_stop_waits_for_backend_completions()
    {
        var disk = new DeferredDisk(1 << 20);
        using var h = new ScsiHarness(d => { d.Add(disk); return [new ScsiLunDefinition(0, 0, disk, "D")]; });
        ulong resp = SubmitHeld(h, ScsiOp.Write10, 0);
        StopDrainsOnlyAfterRelease(h, disk);
        Assert.Equal(ScsiStatus.Good, h.Ring.Bytes(resp, 12)[10]);
    }

    [Fact]
    public void A_lun_channel_fault_stops_the_queue_and_its_commands_stop_counting_for_task_management_once_the_backend_is_idle()
    {
        var disk = new DeferredDisk(1 << 20);
        var log = new BlkTarget.IntegrationTests.TestLogger(null);
        using var h = new ScsiHarness(d => { d.Add(disk); return [new ScsiLunDefinition(0, 0, disk, "D")]; }, log: log);
        SubmitHeld(h, ScsiOp.Read10, 0);
        SubmitHeld(h, ScsiOp.Read10, 1);
        Assert.Equal(2, h.Device.Luns[0].InFlight);
        disk.ReleaseOneWithTag(90);
        Assert.True(h.Queue.Faulted);
        Assert.Contains(log.Lines, l => l.StartsWith("[Error] test-scsi queue 2: backend channel failed", StringComparison.Ordinal));
        h.Queue.Poll();
        // One read is still in the backend, which may write into its data-in buffer: task management must wait.
        Assert.Equal(2, h.Device.Luns[0].InFlight);
        StopDrainsOnlyAfterRelease(h, disk);
        Assert.Equal(0, h.Device.Luns[0].InFlight);
        Assert.Equal(0, h.Ring.UsedIdx);
    }

    [Fact]
    public void A_device_reset_restores_each_luns_configured_write_cache()
    {
        using var cached = new RamDisk(1 << 20);
        using var uncached = new RamDisk(1 << 20);
        var device = new VirtioScsiDevice("test-scsi", [
            new ScsiLunDefinition(0, 0, cached, "ON", WriteCache: true),
            new ScsiLunDefinition(0, 1, uncached, "OFF", WriteCache: false),
        ], new ScsiOptions(), NullLogger.Instance);
        // What MODE SELECT does when the guest flips WCE.
        device.Context.Luns[0].WriteCacheEnabled = false;
        device.Context.Luns[1].WriteCacheEnabled = true;
        device.Reset();
        Assert.True(device.Context.Luns[0].WriteCacheEnabled);
        Assert.False(device.Context.Luns[1].WriteCacheEnabled);
    }
}
