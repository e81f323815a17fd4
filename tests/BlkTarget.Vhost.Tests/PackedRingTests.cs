using BlkTarget.Storage.Interop;
using BlkTarget.Vhost.Memory;
using BlkTarget.Vhost.Queues;

namespace BlkTarget.Vhost.Tests;

public unsafe class PackedRingTests : IDisposable
{
    private const ushort Avail = PackedRingLayout.FlagAvail;
    private const ushort Used = PackedRingLayout.FlagUsed;
    private readonly PackedTestRing _t = new(size: 8);

    public void Dispose() => _t.Dispose();

    [Fact]
    public void Vring_base_carries_avail_and_used_positions_with_wrap_bits_15_and_31()
    {
        Assert.Equal(0x8000_8000u, PackedRingLayout.EncodeBase(0, true, 0, true));
        Assert.Equal(0x0003_8005u, PackedRingLayout.EncodeBase(5, true, 3, false));
        Assert.Equal(0x8007_0002u, PackedRingLayout.EncodeBase(2, false, 7, true));
        Assert.Equal(((ushort)5, true, (ushort)3, false), PackedRingLayout.DecodeBase(0x0003_8005));
        Assert.Equal(0x8005, PackedRingLayout.EncodePosition(5, true));
    }

    [Fact]
    public void Packed_inflight_layout_matches_the_vhost_user_specification()
    {
        Assert.Equal((12, 14, 16, 18, 20, 21, 32), (InflightLayout.FreeHeadOffset, InflightLayout.OldFreeHeadOffset, InflightLayout.PackedUsedIdxOffset,
            InflightLayout.OldUsedIdxOffset, InflightLayout.UsedWrapCounterOffset, InflightLayout.OldUsedWrapCounterOffset, InflightLayout.PackedHeaderBytes));
        Assert.Equal((2, 4, 6, 8, 16, 18, 20, 24, 32), (InflightLayout.PackedNextOffset, InflightLayout.PackedLastOffset, InflightLayout.PackedNumOffset,
            InflightLayout.PackedCounterOffset, InflightLayout.PackedIdOffset, InflightLayout.PackedFlagsOffset, InflightLayout.PackedLenOffset,
            InflightLayout.PackedAddrOffset, InflightLayout.PackedDescStateBytes));
        Assert.Equal(4160ul, InflightLayout.PackedQueueRegionBytes(128));   // align64(32 + 32 * 128)
        Assert.Equal(4160ul, InflightLayout.QueueRegionBytes(128));         // larger than split's 2112
        Assert.Equal(576ul, InflightLayout.QueueRegionBytes(16));
    }

    [Fact]
    public void Takes_a_chain_and_returns_it_by_buffer_id_with_the_used_wrap_flags()
    {
        var ring = _t.CreateRing();
        Assert.Equal(PopStatus.Empty, _t.Pop(ring, out _, out _));
        _t.Add(id: 5, count: 3);
        Assert.Equal(PopStatus.Popped, _t.Pop(ring, out ushort id, out _, out var buffers));
        Assert.Equal(5, id);
        Assert.Equal(3, buffers.Count);
        Assert.Equal(2, buffers.ReadableCount);
        Assert.Equal(0x8003, ring.LastAvailIdx);
        Assert.Equal(PopStatus.Empty, _t.Pop(ring, out _, out _));

        ring.PushUsed(5, 77);
        Assert.Equal(5, _t.Ring[0].Id);
        Assert.Equal(77u, _t.Ring[0].Len);
        Assert.Equal(Avail | Used, _t.Ring[0].Flags & (Avail | Used));
        Assert.Equal(0x8003_8003u, ring.VringBase);
    }

    [Fact]
    public void Both_wrap_counters_flip_at_the_end_of_the_ring_and_completions_may_come_out_of_order()
    {
        var ring = _t.CreateRing();
        ushort next = 0;
        for (int round = 0; round < 6; round++)
        {
            // Three chains of 1, 2 and 3 descriptors (6 of 8 slots), completed in reverse order.
            ushort a = (ushort)(next++ % 8), b = (ushort)(next++ % 8), c = (ushort)(next++ % 8);
            _t.Add(a, 1);
            _t.Add(b, 2);
            _t.Add(c, 3);
            var ids = new List<ushort>();
            while (_t.Pop(ring, out ushort id, out string? error) == PopStatus.Popped) ids.Add(id);
            Assert.Equal([a, b, c], ids);
            ushort usedBefore = ring.UsedIdx;
            ring.PushUsed(c, 3);
            ring.PushUsed(b, 2);
            ring.PushUsed(a, 1);
            var (slot, wrap) = PackedRingLayout.DecodePosition(usedBefore);
            Assert.Equal(c, _t.Ring[slot].Id);
            Assert.Equal(PackedRingLayout.UsedFlags(wrap), _t.Ring[slot].Flags & (Avail | Used));
            Assert.Equal(ring.LastAvailIdx, ring.UsedIdx);
        }
        // 36 descriptors: 4 full passes plus 4, avail and used wrap back to 1.
        Assert.Equal(PackedRingLayout.EncodeBase(4, true, 4, true), ring.VringBase);
    }

    [Fact]
    public void Resumes_from_a_vring_base_in_the_second_pass()
    {
        _t.AvailIdx = 6;
        _t.AvailWrap = false;
        var ring = _t.CreateRing(vringBase: PackedRingLayout.EncodeBase(6, false, 6, false));
        _t.Add(1, 3);
        Assert.Equal(PopStatus.Popped, _t.Pop(ring, out ushort id, out _, out var buffers));
        Assert.Equal(1, id);
        Assert.Equal(3, buffers.Count);
        Assert.Equal(PackedRingLayout.EncodePosition(1, true), ring.LastAvailIdx);
        ring.PushUsed(1, 0);
        Assert.Equal(0, _t.Ring[6].Flags & (Avail | Used));   // used in pass with wrap 0
        Assert.Equal(PackedRingLayout.EncodeBase(1, true, 1, true), ring.VringBase);
    }

    [Fact]
    public void Indirect_table_entries_become_the_buffers()
    {
        var ring = _t.CreateRing();
        ulong table = _t.Allocate(48);
        var entries = (PackedDescriptor*)_t.Memory.At(table);
        entries[0] = new PackedDescriptor { Addr = _t.Allocate(16), Len = 16 };
        entries[1] = new PackedDescriptor { Addr = _t.Allocate(512), Len = 512, Flags = PackedRingLayout.FlagNext };   // NEXT ignored
        entries[2] = new PackedDescriptor { Addr = _t.Allocate(1), Len = 1, Flags = PackedRingLayout.FlagWrite };
        _t.AddRaw([new PackedDescriptor { Addr = table, Len = 48, Id = 3, Flags = PackedRingLayout.FlagIndirect }]);
        Assert.Equal(PopStatus.Popped, _t.Pop(ring, out ushort id, out _, out var buffers));
        Assert.Equal(3, id);
        Assert.Equal((3, 2, 528ul, 1ul), (buffers.Count, buffers.ReadableCount, buffers.ReadableBytes, buffers.WritableBytes));
        ring.PushUsed(3, 1);
        Assert.Equal(PackedRingLayout.EncodeBase(1, true, 1, true), ring.VringBase);
    }

    public static TheoryData<string> HostileCases => ["id-out-of-range", "id-in-flight", "loop", "unfinished-chain", "indirect-with-next",
        "indirect-after-buffer", "zero-length-indirect", "indirect-length-not-16", "nested-indirect", "indirect-outside-memory",
        "buffer-outside-memory", "readable-after-writable", "more-in-flight-than-the-ring"];

    [Theory]
    [MemberData(nameof(HostileCases))]
    public void Hostile_chains_stop_the_queue_with_a_reason(string hostile)
    {
        var ring = _t.CreateRing();
        ulong table = _t.Allocate(64);
        var d = new PackedDescriptor { Addr = _t.Allocate(16), Len = 16, Id = 1, Flags = PackedRingLayout.FlagWrite };
        var indirect = new PackedDescriptor { Addr = table, Len = 32, Id = 1, Flags = PackedRingLayout.FlagIndirect };
        switch (hostile)
        {
            case "id-out-of-range": _t.AddRaw([d with { Id = 8 }]); break;
            case "id-in-flight":
                _t.AddRaw([d]);
                Assert.Equal(PopStatus.Popped, _t.Pop(ring, out _, out _));
                _t.AddRaw([d]);
                break;
            case "loop":
                // Every slot says NEXT, around the whole ring.
                var all = new PackedDescriptor[8];
                Array.Fill(all, d with { Flags = PackedRingLayout.FlagNext });
                _t.AddRaw(all);
                break;
            case "unfinished-chain": _t.AddRaw([d with { Flags = PackedRingLayout.FlagNext }]); break;
            case "indirect-with-next": _t.AddRaw([indirect with { Flags = PackedRingLayout.FlagIndirect | PackedRingLayout.FlagNext }, d]); break;
            case "indirect-after-buffer": _t.AddRaw([d with { Flags = PackedRingLayout.FlagNext }, indirect]); break;
            case "zero-length-indirect": _t.AddRaw([indirect with { Len = 0 }]); break;
            case "indirect-length-not-16": _t.AddRaw([indirect with { Len = 40 }]); break;
            case "nested-indirect":
                ((PackedDescriptor*)_t.Memory.At(table))[0] = indirect;
                _t.AddRaw([indirect]);
                break;
            case "indirect-outside-memory": _t.AddRaw([indirect with { Addr = 0xdead_0000_0000 }]); break;
            case "buffer-outside-memory": _t.AddRaw([d with { Addr = ulong.MaxValue - 4 }]); break;
            case "readable-after-writable": _t.AddRaw([d with { Flags = PackedRingLayout.FlagWrite | PackedRingLayout.FlagNext }, d with { Flags = 0 }]); break;
            case "more-in-flight-than-the-ring":
                for (ushort i = 0; i < 4; i++) _t.AddRaw([d with { Id = i, Flags = PackedRingLayout.FlagNext }, d with { Id = i }]);
                for (int i = 0; i < 4; i++) Assert.Equal(PopStatus.Popped, _t.Pop(ring, out _, out _));
                // The driver "makes available" a slot the device still holds, in the next pass.
                _t.AddRaw([d with { Id = 5 }]);
                break;
        }
        var status = _t.Pop(ring, out _, out string? error);
        Assert.Equal(PopStatus.Corrupt, status);
        Assert.False(string.IsNullOrEmpty(error));
    }

    [Fact]
    public void Interrupts_follow_the_driver_event_suppression_structure()
    {
        var ring = _t.CreateRing(eventIdx: true);
        for (ushort i = 0; i < 4; i++) _t.Add(i);
        for (int i = 0; i < 4; i++) Assert.Equal(PopStatus.Popped, _t.Pop(ring, out _, out _));
        ring.PushUsed(0, 0);
        Assert.True(ring.ShouldSignal());                       // first after a start, always

        *_t.DriverFlags = PackedRingLayout.EventFlagsDisable;
        ring.PushUsed(1, 0);
        Assert.False(ring.ShouldSignal());

        *_t.DriverFlags = PackedRingLayout.EventFlagsDesc;
        *_t.DriverOffWrap = PackedRingLayout.EncodePosition(3, true);  // wake me when slot 3 is used
        ring.PushUsed(2, 0);                                    // slot 2
        Assert.False(ring.ShouldSignal());
        ring.PushUsed(3, 0);                                    // slot 3
        Assert.True(ring.ShouldSignal());

        *_t.DriverFlags = PackedRingLayout.EventFlagsEnable;
        Assert.False(ring.ShouldSignal());                      // nothing new
        _t.Add(4);
        Assert.Equal(PopStatus.Popped, _t.Pop(ring, out _, out _));
        ring.PushUsed(4, 0);
        Assert.True(ring.ShouldSignal());
    }

    [Fact]
    public void Desc_event_in_the_next_pass_is_not_reached_early()
    {
        var ring = _t.CreateRing(eventIdx: true);
        _t.Add(0);
        Assert.Equal(PopStatus.Popped, _t.Pop(ring, out _, out _));
        ring.PushUsed(0, 0);
        Assert.True(ring.ShouldSignal());
        *_t.DriverFlags = PackedRingLayout.EventFlagsDesc;
        *_t.DriverOffWrap = PackedRingLayout.EncodePosition(1, false);  // slot 1 of the second pass
        _t.Add(1);
        Assert.Equal(PopStatus.Popped, _t.Pop(ring, out _, out _));
        ring.PushUsed(1, 0);                                    // slot 1 of the first pass
        Assert.False(ring.ShouldSignal());
    }

    [Fact]
    public void Kicks_are_asked_for_with_desc_and_off_wrap_under_event_idx_and_with_enable_otherwise()
    {
        var ring = _t.CreateRing(eventIdx: true);
        _t.Add(0, 2);
        Assert.True(ring.EnableNotifications());               // already pending
        Assert.Equal(PackedRingLayout.EventFlagsDesc, *_t.DeviceFlags);
        Assert.Equal(0x8000, *_t.DeviceOffWrap);
        Assert.Equal(PopStatus.Popped, _t.Pop(ring, out _, out _));
        Assert.False(ring.EnableNotifications());
        Assert.Equal(0x8002, *_t.DeviceOffWrap);
        ring.DisableNotifications();
        Assert.Equal(PackedRingLayout.EventFlagsDisable, *_t.DeviceFlags);

        using var t2 = new PackedTestRing();
        var plain = t2.CreateRing(eventIdx: false);
        Assert.False(plain.EnableNotifications());
        Assert.Equal(PackedRingLayout.EventFlagsEnable, *t2.DeviceFlags);
    }

    [Fact]
    public void Create_refuses_misaligned_areas_and_bases_outside_the_ring()
    {
        var memory = _t.Memory.Memory;
        ulong ring = PackedTestRing.UserAddr(PackedTestRing.RingGpa), drv = PackedTestRing.UserAddr(PackedTestRing.DriverAreaGpa), dev = PackedTestRing.UserAddr(PackedTestRing.DeviceAreaGpa);
        Assert.NotNull(PackedRing.Create(memory, ring, drv, dev, 8, 0x8000_8000, false));
        Assert.Null(PackedRing.Create(memory, ring + 8, drv, dev, 8, 0x8000_8000, false));
        Assert.Null(PackedRing.Create(memory, ring, drv + 2, dev, 8, 0x8000_8000, false));
        Assert.Null(PackedRing.Create(memory, ring, drv, dev, 8, 0x8000_8008, false));
        Assert.Null(PackedRing.Create(memory, ring, drv, dev, 8, 0x8008_8000, false));
        Assert.Null(PackedRing.Create(memory, 0x10, drv, dev, 8, 0x8000_8000, false));
    }

    // ---- inflight tracking ----

    private sealed class Region : IDisposable
    {
        public readonly MappedMemory Mapping = MappedMemory.MapAnonymous(InflightLayout.PackedQueueRegionBytes(8));
        public byte* Start => Mapping.Pointer;
        public byte Inflight(int entry) => Start[32 + 32 * entry];
        public ushort U16(int offset) => *(ushort*)(Start + offset);
        public void Dispose() => Mapping.Dispose();
    }

    private PackedRing Tracked(Region region, uint vringBase = 0x8000_8000)
    {
        var ring = _t.CreateRing(vringBase: vringBase);
        Assert.Null(ring.TrackInflight(new PackedInflightQueue(region.Start, 8)));
        return ring;
    }

    [Fact]
    public void Taking_a_chain_records_its_descriptors_and_returning_it_frees_its_entries()
    {
        using var region = new Region();
        var ring = Tracked(region);
        Assert.Equal(1, region.U16(InflightLayout.VersionOffset));
        Assert.Equal(8, region.U16(InflightLayout.DescNumOffset));
        _t.Add(6, 3);
        Assert.Equal(PopStatus.Popped, _t.Pop(ring, out _, out _));
        Assert.Equal(1, region.Inflight(0));
        Assert.Equal((3, 2, 3, 3), (region.U16(32 + 6), region.U16(32 + 4), region.U16(InflightLayout.FreeHeadOffset), region.U16(InflightLayout.OldFreeHeadOffset)));
        Assert.Equal(6, region.U16(32 + 2 * 32 + 16));          // the last entry holds the buffer ID
        ring.PushUsed(6, 1);
        Assert.Equal(0, region.Inflight(0));
        Assert.Equal((0, 0, 3, 3, 1, 1), (region.U16(InflightLayout.FreeHeadOffset), region.U16(InflightLayout.OldFreeHeadOffset),
            region.U16(InflightLayout.PackedUsedIdxOffset), region.U16(InflightLayout.OldUsedIdxOffset),
            (int)region.Start[InflightLayout.UsedWrapCounterOffset], (int)region.Start[InflightLayout.OldUsedWrapCounterOffset]));
    }

    [Fact]
    public void After_a_crash_the_chains_in_flight_come_back_in_counter_order_from_their_copies()
    {
        using var region = new Region();
        var ring = Tracked(region);
        _t.Add(4, 2);
        _t.Add(2, 1);
        _t.Add(7, 3);
        for (int i = 0; i < 3; i++) Assert.Equal(PopStatus.Popped, _t.Pop(ring, out _, out _));
        ring.PushUsed(2, 0);                                    // out of order: slot 0 now holds the used descriptor of 2
        // The process dies here. The next one gets a stale base (QEMU keeps the last start's base for packed rings).
        var again = Tracked(region);
        Assert.Equal(PopStatus.Popped, _t.Pop(again, out ushort first, out _, out var b1));
        Assert.Equal((4, 2), ((int)first, b1.Count));
        Assert.Equal(PopStatus.Popped, _t.Pop(again, out ushort second, out _, out var b2));
        Assert.Equal((7, 3), ((int)second, b2.Count));
        Assert.Equal(PopStatus.Empty, _t.Pop(again, out _, out _));
        // used = 1 (chain 2), avail = used + 2 + 3 in flight.
        Assert.Equal(PackedRingLayout.EncodeBase(6, true, 1, true), again.VringBase);
        again.PushUsed(7, 0);
        again.PushUsed(4, 0);
        Assert.Equal(PackedRingLayout.EncodeBase(6, true, 6, true), again.VringBase);
        _t.Add(1, 1);
        Assert.Equal(PopStatus.Popped, _t.Pop(again, out ushort next, out _));
        Assert.Equal(1, next);
    }

    [Fact]
    public void A_torn_used_update_is_committed_when_the_guest_saw_it_and_rolled_back_when_not()
    {
        using var region = new Region();
        var ring = Tracked(region);
        _t.Add(3, 1);
        Assert.Equal(PopStatus.Popped, _t.Pop(ring, out _, out _));
        // Crash between BeginUsed and the flags write: the region says used_idx 1, old_used_idx 0, ring not written.
        var tracker = new PackedInflightQueue(region.Start, 8);
        *(ushort*)(region.Start + InflightLayout.FreeHeadOffset) = 0;
        *(ushort*)(region.Start + InflightLayout.PackedUsedIdxOffset) = 1;
        var restarted = _t.CreateRing();
        Assert.Null(restarted.TrackInflight(tracker));
        Assert.Equal(PopStatus.Popped, _t.Pop(restarted, out ushort id, out _));
        Assert.Equal(3, id);                                    // rolled back: still in flight

        // Now the same with the used descriptor written before the crash: committed, nothing to resubmit.
        restarted.PushUsed(3, 0);
        _t.Add(5, 1);
        Assert.Equal(PopStatus.Popped, _t.Pop(restarted, out _, out _));
        ushort committedFree = region.U16(InflightLayout.OldFreeHeadOffset);
        restarted.PushUsed(5, 0);                               // used descriptor written at slot 1
        int head5 = region.U16(InflightLayout.FreeHeadOffset);
        region.Start[32 + 32 * head5] = 1;                      // as if CommitUsed never ran
        *(ushort*)(region.Start + InflightLayout.OldFreeHeadOffset) = committedFree;
        *(ushort*)(region.Start + InflightLayout.OldUsedIdxOffset) = 1;
        var third = _t.CreateRing(vringBase: PackedRingLayout.EncodeBase(2, true, 2, true));
        Assert.Null(third.TrackInflight(new PackedInflightQueue(region.Start, 8)));
        Assert.Equal(PopStatus.Empty, _t.Pop(third, out _, out _));
    }

    [Fact]
    public void A_garbled_region_is_refused()
    {
        using var region = new Region();
        var ring = Tracked(region);
        _t.Add(3, 2);
        Assert.Equal(PopStatus.Popped, _t.Pop(ring, out _, out _));
        *(ushort*)(region.Start + 32 + InflightLayout.PackedNumOffset) = 200;
        Assert.NotNull(_t.CreateRing().TrackInflight(new PackedInflightQueue(region.Start, 8)));
        *(ushort*)(region.Start + 32 + InflightLayout.PackedNumOffset) = 2;
        region.Start[32] = 7;
        Assert.NotNull(_t.CreateRing().TrackInflight(new PackedInflightQueue(region.Start, 8)));
        region.Start[32] = 1;
        *(ushort*)(region.Start + InflightLayout.DescNumOffset) = 16;
        Assert.NotNull(_t.CreateRing().TrackInflight(new PackedInflightQueue(region.Start, 8)));
    }
}
