using System.Buffers.Binary;
using BlkTarget.Storage;
using BlkTarget.Storage.Ram;
using BlkTarget.Vhost.Blk;
using BlkTarget.Vhost.Device;
using BlkTarget.Vhost.Queues;
using BlkTarget.Vhost.Scsi.Atomicity;
using BlkTarget.IntegrationTests;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlkTarget.Vhost.Tests;

/// <summary>virtio-blk request handling: the test plays the guest driver on a ring over a RAM disk.</summary>
public sealed unsafe class BlkRequestTests : IDisposable
{
    private const ushort Next = VirtqDescriptor.FlagNext;
    private const ushort Write = VirtqDescriptor.FlagWrite;
    private readonly TestRing _ring = new(size: 64);
    private readonly Storage.IoContext _io = new();
    private Storage.IBlockDevice _disk = new RamDisk(1 << 20);
    private BlkDeviceContext _context = null!;
    private ILogger _log = NullLogger.Instance;
    private BlkQueue _queue;
    private ushort _nextDescriptor;

    public BlkRequestTests() => _queue = CreateQueue(_disk, new BlkOptions());

    /// <summary>What a Linux guest acks: FLUSH and CONFIG_WCE (a volatile write cache it flushes).</summary>
    private const ulong GuestFeatures = (1UL << VirtioBlk.FeatureFlush) | (1UL << VirtioBlk.FeatureConfigWce);

    private BlkQueue CreateQueue(Storage.IBlockDevice disk, BlkOptions options, ulong features = GuestFeatures, CompareAndWriteGate? gate = null,
        IVirtqueue? ring = null)
    {
        _context = new BlkDeviceContext("test", disk, options, gate);
        var start = new QueueStartInfo(0, ring ?? _ring.CreateRing(), _ring.Memory.Memory, features, -1, -1, _io);
        return new BlkQueue(start, _context, _log);
    }

    private void UseDisk(Storage.IBlockDevice disk, BlkOptions? options = null, ulong features = GuestFeatures, CompareAndWriteGate? gate = null)
    {
        _queue.Dispose();
        _disk.Dispose();
        _disk = disk;
        _queue = CreateQueue(disk, options ?? new BlkOptions(), features, gate);
    }

    private ulong Header(uint type, ulong sector)
    {
        ulong gpa = _ring.Allocate(16);
        var h = _ring.Bytes(gpa, 16);
        BinaryPrimitives.WriteUInt32LittleEndian(h, type);
        BinaryPrimitives.WriteUInt64LittleEndian(h[8..], sector);
        return gpa;
    }

    /// <summary>Builds a chain of (gpa, len, writable) buffers and makes it available; returns its head.</summary>
    private ushort Offer(params (ulong Gpa, uint Len, bool Writable)[] buffers)
    {
        ushort head = _nextDescriptor;
        for (int i = 0; i < buffers.Length; i++)
        {
            var (gpa, len, writable) = buffers[i];
            bool last = i == buffers.Length - 1;
            _ring.SetDescriptor(_nextDescriptor, gpa, len, (ushort)((writable ? Write : 0) | (last ? 0 : Next)), (ushort)(_nextDescriptor + 1));
            _nextDescriptor++;
        }
        _ring.MakeAvailable(head);
        return head;
    }

    /// <summary>Builds a chain of (gpa, len, writable) buffers, makes it available, runs the queue once and
    /// returns the status byte and the used length.</summary>
    private (byte Status, uint UsedLength) Run(params (ulong Gpa, uint Len, bool Writable)[] buffers)
    {
        ushort usedBefore = _ring.UsedIdx;
        ushort head = Offer(buffers);
        _queue.Poll();
        Assert.Equal((ushort)(usedBefore + 1), _ring.UsedIdx);
        var used = _ring.Used(usedBefore);
        Assert.Equal(head, (ushort)used.Id);
        var (statusGpa, statusLen, _) = buffers[^1];
        return (_ring.Bytes(statusGpa + statusLen - 1, 1)[0], used.Len);
    }

    private (byte, uint) WriteSectors(ulong sector, byte[] data)
    {
        ulong buffer = _ring.Allocate((uint)data.Length, 512);
        data.CopyTo(_ring.Bytes(buffer, data.Length));
        return Run((Header(VirtioBlk.TypeOut, sector), 16, false), (buffer, (uint)data.Length, false), (_ring.Allocate(1), 1, true));
    }

    private (byte Status, uint Used, byte[] Data) ReadSectors(ulong sector, int length)
    {
        ulong buffer = _ring.Allocate((uint)length, 512);
        var (status, used) = Run((Header(VirtioBlk.TypeIn, sector), 16, false), (buffer, (uint)length, true), (_ring.Allocate(1), 1, true));
        return (status, used, _ring.Bytes(buffer, length).ToArray());
    }

    private static byte[] Random(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    [Fact]
    public void Write_then_read_returns_the_data_and_used_length_counts_data_plus_status()
    {
        var data = Random(4096, 1);
        Assert.Equal((VirtioBlk.StatusOk, 1u), WriteSectors(8, data));
        var (status, used, back) = ReadSectors(8, 4096);
        Assert.Equal(VirtioBlk.StatusOk, status);
        Assert.Equal(4097u, used);
        Assert.Equal(data, back);
    }

    [Fact]
    public void Header_data_and_status_may_share_descriptors()
    {
        // One readable descriptor holding header + data, one writable holding the status byte.
        var data = Random(512, 2);
        ulong buffer = _ring.Allocate(16 + 512);
        BinaryPrimitives.WriteUInt32LittleEndian(_ring.Bytes(buffer, 4), VirtioBlk.TypeOut);
        BinaryPrimitives.WriteUInt64LittleEndian(_ring.Bytes(buffer + 8, 8), 3);
        data.CopyTo(_ring.Bytes(buffer + 16, 512));
        Assert.Equal(VirtioBlk.StatusOk, Run((buffer, 16 + 512, false), (_ring.Allocate(1), 1, true)).Status);

        // Read with data and status in one writable descriptor, header split over two.
        ulong h = Header(VirtioBlk.TypeIn, 3);
        ulong inBuffer = _ring.Allocate(513);
        var (status, used) = Run((h, 7, false), (h + 7, 9, false), (inBuffer, 513, true));
        Assert.Equal(VirtioBlk.StatusOk, status);
        Assert.Equal(513u, used);
        Assert.Equal(data, _ring.Bytes(inBuffer, 512).ToArray());
    }

    [Fact]
    public void Out_of_range_sectors_fail_with_ioerr()
    {
        ulong lastSector = (1 << 20) / 512 - 1;
        Assert.Equal(VirtioBlk.StatusOk, WriteSectors(lastSector, new byte[512]).Item1);
        Assert.Equal(VirtioBlk.StatusIoErr, WriteSectors(lastSector, new byte[1024]).Item1);
        Assert.Equal(VirtioBlk.StatusIoErr, ReadSectors(ulong.MaxValue / 2, 512).Status);
        Assert.Equal(VirtioBlk.StatusIoErr, ReadSectors(ulong.MaxValue, 512).Status);
    }

    [Fact]
    public void Lengths_that_are_not_whole_sectors_fail_with_ioerr()
    {
        Assert.Equal(VirtioBlk.StatusIoErr, WriteSectors(0, new byte[100]).Item1);
    }

    [Fact]
    public void With_4k_blocks_unaligned_sectors_fail()
    {
        UseDisk(new RamDisk(1 << 20, 4096));
        Assert.Equal(VirtioBlk.StatusOk, WriteSectors(8, new byte[4096]).Item1);
        Assert.Equal(VirtioBlk.StatusIoErr, WriteSectors(1, new byte[4096]).Item1);
        Assert.Equal(VirtioBlk.StatusIoErr, WriteSectors(8, new byte[512]).Item1);
    }

    [Fact]
    public void Unknown_request_types_are_unsupported()
    {
        var (status, used) = Run((Header(99, 0), 16, false), (_ring.Allocate(1), 1, true));
        Assert.Equal(VirtioBlk.StatusUnsupported, status);
        Assert.Equal(1u, used);
    }

    [Fact]
    public void Flush_succeeds()
    {
        Assert.Equal(VirtioBlk.StatusOk, Run((Header(VirtioBlk.TypeFlush, 0), 16, false), (_ring.Allocate(1), 1, true)).Status);
    }

    [Fact]
    public void Get_id_returns_the_serial_truncated_to_20_bytes()
    {
        UseDisk(new RamDisk(1 << 20), new BlkOptions { Serial = "0123456789abcdefghijKLMN" });
        ulong id = _ring.Allocate(20);
        var (status, used) = Run((Header(VirtioBlk.TypeGetId, 0), 16, false), (id, 20, true), (_ring.Allocate(1), 1, true));
        Assert.Equal(VirtioBlk.StatusOk, status);
        Assert.Equal(21u, used);
        Assert.Equal("0123456789abcdefghij"u8.ToArray(), _ring.Bytes(id, 20).ToArray());
    }

    private ulong Ranges(params (ulong Sector, uint Count, uint Flags)[] ranges)
    {
        ulong gpa = _ring.Allocate((uint)(16 * ranges.Length));
        for (int i = 0; i < ranges.Length; i++)
        {
            var s = _ring.Bytes(gpa + (ulong)(16 * i), 16);
            BinaryPrimitives.WriteUInt64LittleEndian(s, ranges[i].Sector);
            BinaryPrimitives.WriteUInt32LittleEndian(s[8..], ranges[i].Count);
            BinaryPrimitives.WriteUInt32LittleEndian(s[12..], ranges[i].Flags);
        }
        return gpa;
    }

    [Theory]
    [InlineData(VirtioBlk.TypeDiscard, 0u)]
    [InlineData(VirtioBlk.TypeWriteZeroes, 0u)]
    [InlineData(VirtioBlk.TypeWriteZeroes, 1u)]
    public void Discard_and_write_zeroes_clear_every_range(uint type, uint flags)
    {
        WriteSectors(0, Random(64 * 512, 3));
        ulong ranges = Ranges((2, 4, flags), (40, 8, flags));
        Assert.Equal(VirtioBlk.StatusOk, Run((Header(type, 0), 16, false), (ranges, 32, false), (_ring.Allocate(1), 1, true)).Status);
        var data = ReadSectors(0, 64 * 512).Data;
        Assert.All(data.AsSpan(2 * 512, 4 * 512).ToArray(), b => Assert.Equal(0, b));
        Assert.All(data.AsSpan(40 * 512, 8 * 512).ToArray(), b => Assert.Equal(0, b));
        Assert.NotEqual(new byte[512], data.AsSpan(6 * 512, 512).ToArray());
    }

    [Fact]
    public void Discard_with_unmap_flag_is_unsupported_and_bad_ranges_fail()
    {
        ulong status = _ring.Allocate(1);
        Assert.Equal(VirtioBlk.StatusUnsupported, Run((Header(VirtioBlk.TypeDiscard, 0), 16, false), (Ranges((0, 1, 1)), 16, false), (status, 1, true)).Status);
        Assert.Equal(VirtioBlk.StatusIoErr, Run((Header(VirtioBlk.TypeDiscard, 0), 16, false), (Ranges((2047, 2, 0)), 16, false), (_ring.Allocate(1), 1, true)).Status);
        Assert.Equal(VirtioBlk.StatusIoErr, Run((Header(VirtioBlk.TypeDiscard, 0), 16, false), (Ranges((0, 1, 0)), 15, false), (_ring.Allocate(1), 1, true)).Status);
        Assert.Equal(VirtioBlk.StatusIoErr, Run((Header(VirtioBlk.TypeDiscard, 0), 16, false), (_ring.Allocate(1), 1, true)).Status);
    }

    [Fact]
    public void Too_many_range_segments_fail_with_ioerr()
    {
        var many = Enumerable.Range(0, 33).Select(i => ((ulong)i, 1u, 0u)).ToArray();
        Assert.Equal(VirtioBlk.StatusIoErr, Run((Header(VirtioBlk.TypeDiscard, 0), 16, false), (Ranges(many), 33 * 16, false), (_ring.Allocate(1), 1, true)).Status);
    }

    [Fact]
    public void Read_only_export_refuses_writes_discards_and_zeroes_but_reads()
    {
        UseDisk(new RamDisk(1 << 20, readOnly: true));
        Assert.Equal(VirtioBlk.StatusIoErr, WriteSectors(0, new byte[512]).Item1);
        Assert.Equal(VirtioBlk.StatusIoErr, Run((Header(VirtioBlk.TypeDiscard, 0), 16, false), (Ranges((0, 1, 0)), 16, false), (_ring.Allocate(1), 1, true)).Status);
        Assert.Equal(VirtioBlk.StatusIoErr, Run((Header(VirtioBlk.TypeWriteZeroes, 0), 16, false), (Ranges((0, 1, 0)), 16, false), (_ring.Allocate(1), 1, true)).Status);
        Assert.Equal(VirtioBlk.StatusOk, ReadSectors(0, 512).Status);
    }

    [Fact]
    public void A_request_shorter_than_the_header_fails_with_ioerr()
    {
        Assert.Equal(VirtioBlk.StatusIoErr, Run((Header(VirtioBlk.TypeIn, 0), 8, false), (_ring.Allocate(1), 1, true)).Status);
    }

    [Fact]
    public void A_request_without_a_writable_status_byte_breaks_only_the_queue()
    {
        _ring.SetDescriptor(0, Header(VirtioBlk.TypeOut, 0), 16);
        _ring.MakeAvailable(0);
        _queue.Poll();
        Assert.NotNull(_queue.BrokenReason);
        Assert.Equal(0, _ring.UsedIdx);
        // A broken queue takes no more requests.
        _ring.MakeAvailable(0);
        Assert.Equal(0, _queue.Poll());
    }

    [Fact]
    public void A_descriptor_outside_guest_memory_breaks_the_queue_without_touching_memory()
    {
        _ring.SetDescriptor(0, Header(VirtioBlk.TypeIn, 0), 16, Next, 1);
        _ring.SetDescriptor(1, 0x1000, 512, Write | Next, 2);
        _ring.SetDescriptor(2, _ring.Allocate(1), 1, Write);
        _ring.MakeAvailable(0);
        _queue.Poll();
        Assert.Contains("BadAddress", _queue.BrokenReason);
    }

    private void FlushRequestAt(ushort head)
    {
        _ring.SetDescriptor(head, Header(VirtioBlk.TypeFlush, 0), 16, Next, (ushort)(head + 1));
        _ring.SetDescriptor(head + 1, _ring.Allocate(1), 1, Write);
    }

    [Fact]
    public void A_head_made_available_again_after_completion_is_served()
    {
        FlushRequestAt(0);
        _ring.MakeAvailable(0);
        _ring.MakeAvailable(0);
        _queue.Poll();   // the RAM disk completes inline, so the second use is legal
        Assert.Null(_queue.BrokenReason);
        Assert.Equal(2, _ring.UsedIdx);
    }

    /// <summary>Offers a 4 KiB read or write of <paramref name="sector"/> without running the queue.</summary>
    private void OfferData(uint type, ulong sector) =>
        Offer((Header(type, sector), 16, false), (_ring.Allocate(4096, 512), 4096, type == VirtioBlk.TypeIn), (_ring.Allocate(1), 1, true));

    [Fact]
    public void Each_request_of_a_batch_runs_in_ring_order_after_the_hints_for_the_next_reads()
    {
        var disk = new RecordingDisk(1 << 20) { Prefetching = true };
        UseDisk(disk);
        OfferData(VirtioBlk.TypeIn, 0);
        OfferData(VirtioBlk.TypeIn, 16);
        OfferData(VirtioBlk.TypeOut, 32);
        OfferData(VirtioBlk.TypeIn, 48);
        OfferData(VirtioBlk.TypeIn, 2048);   // beyond the 1 MiB disk: no hint, and the read fails as always
        _queue.Poll();
        Assert.Equal(
            ["prefetch 4096@0", "prefetch 4096@8192", "read 4096@0", "read 4096@8192", "prefetch 4096@24576", "write 4096@16384", "read 4096@24576"],
            disk.Events);
        Assert.Equal(5, _ring.UsedIdx);
        Assert.Equal([0, 3, 6, 9, 12], Enumerable.Range(0, 5).Select(i => (int)_ring.Used((ushort)i).Id));
    }

    [Fact]
    public void A_deep_batch_publishes_used_entries_every_eighth_request_while_it_runs()
    {
        // The driver gets completions while the device still works on the rest of the batch, so it can resubmit.
        var usedAtSubmit = new List<int>();
        var disk = new RecordingDisk(1 << 20) { BeforeSubmit = _ => usedAtSubmit.Add(_ring.UsedIdx) };
        UseDisk(disk);
        for (ulong i = 0; i < 20; i++) OfferData(VirtioBlk.TypeIn, i * 8);
        _queue.Poll();
        Assert.Equal([0, 0, 0, 0, 0, 0, 0, 0, 8, 8, 8, 8, 8, 8, 8, 8, 16, 16, 16, 16], usedAtSubmit);
        Assert.Equal(20, _ring.UsedIdx);
        Assert.Equal(Enumerable.Range(0, 20).Select(i => i * 3), Enumerable.Range(0, 20).Select(i => (int)_ring.Used((ushort)i).Id));
    }

    [Fact]
    public void After_an_idle_poll_the_chain_taken_last_is_hinted_as_the_next_one()
    {
        // A driver at QD1 reuses the chain it got back; the hint asks for its lines before the walk needs them.
        var ring = new HintRecordingRing(_ring.CreateRing());
        _queue.Dispose();
        _queue = CreateQueue(_disk, new BlkOptions(), ring: ring);
        OfferData(VirtioBlk.TypeIn, 0);
        _queue.Poll();
        Assert.Empty(ring.PrefetchedIds);   // nothing taken before: nothing to guess from
        _queue.Poll();                      // idle
        _ring.MakeAvailable(0);
        _queue.Poll();
        Assert.Equal([(ushort)0], ring.PrefetchedIds);
        OfferData(VirtioBlk.TypeIn, 8);
        _queue.Poll();                      // the poll before took a request: no guess
        Assert.Equal([(ushort)0], ring.PrefetchedIds);
        Assert.Equal(3, _ring.UsedIdx);
    }

    [Fact]
    public void A_lone_read_after_an_idle_poll_is_hinted_as_soon_as_it_is_walked()
    {
        // A driver waiting on each request: there is no request before it to overlap its data load with, so the model
        // is asked at once, and the pipeline does not ask a second time when more requests follow it.
        var disk = new RecordingDisk(1 << 20) { Prefetching = true };
        UseDisk(disk);
        OfferData(VirtioBlk.TypeIn, 0);
        _queue.Poll();                       // a queue's first poll follows no idle one
        Assert.Equal(["read 4096@0"], disk.Events);
        _queue.Poll();                       // idle
        OfferData(VirtioBlk.TypeIn, 8);
        _queue.Poll();
        Assert.Equal(["read 4096@0", "prefetch 4096@4096", "read 4096@4096"], disk.Events);
        _queue.Poll();                       // idle
        OfferData(VirtioBlk.TypeIn, 16);
        OfferData(VirtioBlk.TypeIn, 24);
        _queue.Poll();
        Assert.Equal(
            ["read 4096@0", "prefetch 4096@4096", "read 4096@4096", "prefetch 4096@8192", "prefetch 4096@12288", "read 4096@8192", "read 4096@12288"],
            disk.Events);
        Assert.Equal(4, _ring.UsedIdx);
    }

    [Fact]
    public void Requests_taken_before_a_corrupt_chain_still_complete()
    {
        var disk = new RecordingDisk(1 << 20) { Prefetching = true };
        UseDisk(disk);
        OfferData(VirtioBlk.TypeIn, 0);
        OfferData(VirtioBlk.TypeIn, 8);
        _ring.SetDescriptor(_nextDescriptor, 0x1000, 512, Write);   // outside guest memory
        _ring.MakeAvailable(_nextDescriptor);
        _queue.Poll();
        Assert.Contains("BadAddress", _queue.BrokenReason);
        Assert.Equal(["prefetch 4096@0", "prefetch 4096@4096", "read 4096@0", "read 4096@4096"], disk.Events);
        Assert.Equal(2, _ring.UsedIdx);
    }

    [Fact]
    public void A_read_hands_the_backend_only_its_data_buffers_not_the_emptied_status_descriptor()
    {
        // An empty iovec at the status byte's odd address made O_DIRECT backends bounce every read.
        var disk = new RecordingDisk(1 << 20);
        UseDisk(disk);
        var (status, used, _) = ReadSectors(8, 4096);
        Assert.Equal(VirtioBlk.StatusOk, status);
        Assert.Equal(4097u, used);
        var request = Assert.Single(disk.Requests);
        Assert.Equal(BlockOperation.Read, request.Operation);
        Assert.Equal(4096ul, request.Length);
        var iov = Assert.Single(request.Iov);
        Assert.Equal((nuint)4096, iov.Length);
        Assert.Equal(0ul, (ulong)iov.Base % 512);
    }

    [Fact]
    public void A_head_made_available_twice_while_in_flight_breaks_the_queue()
    {
        var disk = new DeferredDisk(1 << 20);
        UseDisk(disk);
        FlushRequestAt(0);
        _ring.MakeAvailable(0);
        _ring.MakeAvailable(0);
        _queue.Poll();
        Assert.Contains("in flight", _queue.BrokenReason);
        // The request that was legitimately in flight still completes.
        disk.ReleaseCompletions();
        _queue.Poll();
        Assert.Equal(1, _ring.UsedIdx);
    }

    [Fact]
    public void Stop_waits_for_in_flight_requests_before_reporting_drained()
    {
        var disk = new DeferredDisk(1 << 20);
        UseDisk(disk);
        FlushRequestAt(0);
        _ring.MakeAvailable(0);
        _queue.Poll();
        Assert.Equal(1, _queue.InFlight);
        bool drained = false;
        _queue.BeginStop(() => drained = true);
        Assert.False(drained);
        _queue.Poll();
        Assert.False(drained);
        disk.ReleaseCompletions();
        _queue.Poll();
        Assert.True(drained);
        Assert.Equal(1, _ring.UsedIdx);
        // A stopping queue takes no new requests.
        FlushRequestAt(4);
        _ring.MakeAvailable(4);
        _queue.Poll();
        Assert.Equal(1, _queue.LastAvailIdx);
    }

    [Fact]
    public void A_queue_stopped_by_an_internal_error_drains_only_when_its_backend_has_nothing_in_flight()
    {
        var disk = new DeferredDisk(1 << 20);
        UseDisk(disk);
        FlushRequestAt(0);
        _ring.MakeAvailable(0);
        _queue.Poll();
        _queue.Fault(new InvalidOperationException("injected"));
        Assert.Contains("internal error", _queue.BrokenReason);
        bool drained = false;
        _queue.BeginStop(() => drained = true);
        _queue.Poll();
        // The backend may still write into the request's buffers: guest memory must stay mapped until it is done.
        Assert.False(drained);
        FlushRequestAt(4);
        _ring.MakeAvailable(4);
        _queue.Poll();
        Assert.Equal(1, _queue.LastAvailIdx);
        disk.ReleaseCompletions();
        _queue.Poll();
        Assert.True(drained);
        // The late completion is counted, not returned to the guest through a ring the queue no longer trusts.
        Assert.Equal(0, _ring.UsedIdx);
    }

    [Fact]
    public void A_backend_channel_fault_stops_the_queue_is_logged_with_the_device_name_and_drains_once_the_backend_is_idle()
    {
        var disk = new DeferredDisk(1 << 20);
        var log = new TestLogger(null);
        _log = log;
        UseDisk(disk);
        for (ushort head = 0; head < 6; head += 2)
        {
            FlushRequestAt(head);
            _ring.MakeAvailable(head);
        }
        _queue.Poll();
        Assert.Equal(3, disk.Held);
        // A backend bug: a completion for a request that is not in flight. The queue's completion handling throws,
        // the channel reports it faulted and stops delivering.
        disk.ReleaseOneWithTag(40);
        Assert.True(_queue.Faulted);
        Assert.Contains("backend channel", _queue.BrokenReason);
        Assert.Contains(log.Lines, l => l.StartsWith("[Error] test queue 0: backend channel failed", StringComparison.Ordinal));
        bool drained = false;
        _queue.BeginStop(() => drained = true);
        _queue.Poll();
        Assert.False(drained);                                   // two operations still in the backend
        disk.ReleaseCompletions();
        Assert.Equal(0, disk.Held);
        _queue.Poll();
        Assert.True(drained);
        Assert.Equal(0, _ring.UsedIdx);
        Assert.False(_queue.PrepareToSleep());
    }

    [Fact]
    public void Writes_carry_fua_exactly_while_the_guest_has_the_write_cache_off()
    {
        var disk = new RecordingDisk(1 << 20);
        UseDisk(disk);
        WriteSectors(0, new byte[512]);
        Assert.True(_context.Config.Write(BlkConfigSpace.OffWriteback, [0]));
        WriteSectors(0, new byte[512]);
        ReadSectors(0, 512);
        Assert.True(_context.Config.Write(BlkConfigSpace.OffWriteback, [1]));
        WriteSectors(0, new byte[512]);
        Assert.Equal(
            [(BlockOperation.Write, BlockRequestFlags.None), (BlockOperation.Write, BlockRequestFlags.Fua),
             (BlockOperation.Read, BlockRequestFlags.None), (BlockOperation.Write, BlockRequestFlags.None)],
            disk.Requests.Select(r => (r.Operation, r.Flags)));
    }

    [Fact]
    public void A_guest_that_did_not_negotiate_flush_gets_every_write_and_write_zeroes_durable()
    {
        var disk = new RecordingDisk(1 << 20);
        UseDisk(disk, features: 0);
        WriteSectors(0, new byte[512]);
        Assert.Equal(VirtioBlk.StatusOk, Run((Header(VirtioBlk.TypeWriteZeroes, 0), 16, false), (Ranges((8, 8, 0)), 16, false), (_ring.Allocate(1), 1, true)).Status);
        Assert.Equal(VirtioBlk.StatusOk, Run((Header(VirtioBlk.TypeDiscard, 0), 16, false), (Ranges((16, 8, 0)), 16, false), (_ring.Allocate(1), 1, true)).Status);
        Assert.Equal(
            [(BlockOperation.Write, BlockRequestFlags.Fua), (BlockOperation.WriteZeroes, BlockRequestFlags.Fua), (BlockOperation.Discard, BlockRequestFlags.None)],
            disk.Operations);
    }

    [Fact]
    public void Write_zeroes_carries_fua_while_the_write_cache_is_off()
    {
        var disk = new RecordingDisk(1 << 20);
        UseDisk(disk);
        Assert.True(_context.Config.Write(BlkConfigSpace.OffWriteback, [0]));
        Assert.Equal(VirtioBlk.StatusOk, Run((Header(VirtioBlk.TypeWriteZeroes, 0), 16, false), (Ranges((8, 8, VirtioBlk.RangeFlagUnmap)), 16, false), (_ring.Allocate(1), 1, true)).Status);
        Assert.Equal([(BlockOperation.WriteZeroes, BlockRequestFlags.Unmap | BlockRequestFlags.Fua)], disk.Operations);
    }

    [Theory]
    [InlineData(255)]
    [InlineData(1021)]
    public void Legal_requests_far_beyond_seg_max_are_served(int dataSegments)
    {
        // An indirect table of header, dataSegments x 512 bytes (each its own buffer) and the status byte: what
        // Windows guests send; the limit is the 1024-entry table, not seg_max.
        int entries = dataSegments + 2;
        ulong table = _ring.Allocate((uint)(16 * entries));
        var descriptors = (VirtqDescriptor*)_ring.Memory.At(table);
        descriptors[0] = new VirtqDescriptor { Addr = Header(VirtioBlk.TypeOut, 0), Len = 16, Flags = Next, Next = 1 };
        for (int i = 1; i <= dataSegments; i++)
        {
            ulong data = _ring.Allocate(512);
            _ring.Bytes(data, 512).Fill((byte)i);
            descriptors[i] = new VirtqDescriptor { Addr = data, Len = 512, Flags = Next, Next = (ushort)(i + 1) };
        }
        ulong status = _ring.Allocate(1);
        descriptors[entries - 1] = new VirtqDescriptor { Addr = status, Len = 1, Flags = Write };
        _ring.SetDescriptor(10, table, (uint)(16 * entries), VirtqDescriptor.FlagIndirect);
        _ring.MakeAvailable(10);
        _queue.Poll();
        Assert.Null(_queue.BrokenReason);
        Assert.Equal(VirtioBlk.StatusOk, _ring.Bytes(status, 1)[0]);
        var (readStatus, _, back) = ReadSectors(0, 512 * dataSegments);
        Assert.Equal(VirtioBlk.StatusOk, readStatus);
        for (int i = 1; i <= dataSegments; i++) Assert.Equal((byte)i, back[(i - 1) * 512 + 17]);
    }

    [Fact]
    public void Backend_errors_fail_only_their_request_and_the_queue_keeps_serving()
    {
        UseDisk(new Storage.Faults.FaultInjectingDisk(new RamDisk(1 << 20), [
            new Storage.Faults.FaultRule(Storage.BlockStatus.IoError) { Operation = Storage.BlockOperation.Read, RangeStart = 4096, RangeLength = 512 },
            new Storage.Faults.FaultRule(Storage.BlockStatus.NoSpace) { Operation = Storage.BlockOperation.Write, RangeStart = 8192, RangeLength = 512 },
            new Storage.Faults.FaultRule(Storage.BlockStatus.Unsupported) { Operation = Storage.BlockOperation.Flush },
        ]));
        Assert.Equal(VirtioBlk.StatusIoErr, ReadSectors(8, 512).Status);
        Assert.Equal(VirtioBlk.StatusIoErr, WriteSectors(16, new byte[512]).Item1);
        Assert.Equal(VirtioBlk.StatusUnsupported, Run((Header(VirtioBlk.TypeFlush, 0), 16, false), (_ring.Allocate(1), 1, true)).Status);
        Assert.Equal((VirtioBlk.StatusOk, 1u), WriteSectors(0, new byte[512]));
        Assert.Equal(VirtioBlk.StatusOk, ReadSectors(0, 512).Status);
        Assert.Null(_queue.BrokenReason);
    }

    [Fact]
    public void Stop_reports_drained_and_last_avail_index()
    {
        WriteSectors(0, new byte[512]);
        WriteSectors(1, new byte[512]);
        bool drained = false;
        _queue.BeginStop(() => drained = true);
        Assert.True(drained);
        Assert.Equal(2, _queue.LastAvailIdx);
    }

    // ---- a shared disk: COMPARE AND WRITE of a SCSI export of the same disk is atomic against blk writes too ----

    [Theory]
    [InlineData(VirtioBlk.TypeOut)]
    [InlineData(VirtioBlk.TypeWriteZeroes)]
    [InlineData(VirtioBlk.TypeDiscard)]
    public void On_a_shared_disk_a_write_overlapping_a_range_a_compare_and_write_holds_waits_for_its_release(uint type)
    {
        var gate = new CompareAndWriteGate();
        UseDisk(new RamDisk(1 << 20), gate: gate);
        var old = Random(512, 7);
        WriteSectors(8, old);
        int holder = gate.TryHold(8, 1);                  // LBA 8 of 512-byte blocks = sector 8
        Assert.True(holder >= 0);
        ulong payload;
        uint payloadLength;
        if (type == VirtioBlk.TypeOut)
        {
            payload = _ring.Allocate(512, 512);
            _ring.Bytes(payload, 512).Fill(0x5a);
            payloadLength = 512;
        }
        else
        {
            payload = Ranges((8, 1, 0));
            payloadLength = 16;
        }
        ulong status = _ring.Allocate(1);
        ushort usedBefore = _ring.UsedIdx;
        ushort head = Offer((Header(type, 8), 16, false), (payload, payloadLength, false), (status, 1, true));
        _queue.Poll();
        _queue.Poll();
        Assert.Equal(usedBefore, _ring.UsedIdx);          // held back: not completed...
        Assert.Equal(1, _queue.InFlight);
        Assert.Equal(old, ReadSectors(8, 512).Data);      // ...and nothing written (a read passes the gate)
        Assert.Equal(VirtioBlk.StatusOk, WriteSectors(9, Random(512, 8)).Item1);   // a write next to the range goes
        usedBefore = _ring.UsedIdx;
        gate.Release(holder);
        _queue.Poll();
        Assert.Equal((ushort)(usedBefore + 1), _ring.UsedIdx);
        Assert.Equal(head, (ushort)_ring.Used(usedBefore).Id);
        Assert.Equal(VirtioBlk.StatusOk, _ring.Bytes(status, 1)[0]);
        byte expected = type == VirtioBlk.TypeOut ? (byte)0x5a : (byte)0;
        Assert.All(ReadSectors(8, 512).Data, b => Assert.Equal(expected, b));   // the RAM disk's discard zeroes
        Assert.Equal(0, _queue.InFlight);
    }

    [Fact]
    public void On_a_shared_disk_a_compare_and_write_waits_for_a_blk_write_already_in_flight()
    {
        var gate = new CompareAndWriteGate();
        var disk = new DeferredDisk(1 << 20);
        UseDisk(disk, gate: gate);
        ulong data = _ring.Allocate(512, 512);
        Offer((Header(VirtioBlk.TypeOut, 8), 16, false), (data, 512, false), (_ring.Allocate(1), 1, true));
        _queue.Poll();
        Assert.Equal(1, disk.Held);                        // the write reached the backend before the hold
        int holder = gate.TryHold(8, 1);
        Assert.True(holder >= 0);
        var drain = new WriteDrain();
        drain.Begin(gate);
        Assert.False(drain.Finished());                    // the COMPARE AND WRITE may not read yet
        disk.ReleaseCompletions();
        _queue.Poll();
        Assert.Equal(1, _ring.UsedIdx);
        Assert.True(drain.Finished());
        gate.Release(holder);
    }

    public void Dispose()
    {
        _queue.Dispose();
        _disk.Dispose();
        _ring.Dispose();
        _io.Dispose();
    }
}
