using System.Runtime.InteropServices;
using BlkTarget.Storage.Interop;
using BlkTarget.Vhost.Memory;
using BlkTarget.Vhost.Protocol;
using BlkTarget.Vhost.Queues;

namespace BlkTarget.Vhost.Tests;

/// <summary>Inflight I/O tracking for split rings (vhost-user specification, "Inflight I/O tracking").</summary>
public sealed unsafe class InflightTests : IDisposable
{
    private const uint Size = 16;
    private readonly TestRing _t = new(Size);
    private readonly byte* _region = (byte*)NativeMemory.AllocZeroed((nuint)InflightLayout.SplitQueueRegionBytes(Size));

    public void Dispose()
    {
        NativeMemory.Free(_region);
        _t.Dispose();
    }

    // Field accessors at the spec's offsets, written out literally so a layout change shows up here.
    private ushort Version { get => *(ushort*)(_region + 8); set => *(ushort*)(_region + 8) = value; }
    private ushort DescNum { get => *(ushort*)(_region + 10); set => *(ushort*)(_region + 10) = value; }
    private ushort LastBatchHead { get => *(ushort*)(_region + 12); set => *(ushort*)(_region + 12) = value; }
    private ushort UsedIdx { get => *(ushort*)(_region + 14); set => *(ushort*)(_region + 14) = value; }
    private byte Inflight(int d) => _region[16 + 16 * d];
    private ushort Next(int d) => *(ushort*)(_region + 16 + 16 * d + 6);
    private ulong Counter(int d) => *(ulong*)(_region + 16 + 16 * d + 8);
    private void SetDesc(int d, byte inflight, ulong counter, ushort next = 0)
    {
        _region[16 + 16 * d] = inflight;
        *(ushort*)(_region + 16 + 16 * d + 6) = next;
        *(ulong*)(_region + 16 + 16 * d + 8) = counter;
    }

    private void InitRegion(ushort usedIdx = 0)
    {
        Version = 1;
        DescNum = (ushort)Size;
        UsedIdx = usedIdx;
    }

    private SplitRing TrackedRing(ushort lastAvail = 0)
    {
        var ring = _t.CreateRing(lastAvail: lastAvail);
        Assert.Null(ring.TrackInflight(new SplitInflightQueue(_region, Size)));
        return ring;
    }

    private static List<ushort> PopAll(SplitRing ring)
    {
        var heads = new List<ushort>();
        while (ring.TryPop(out ushort head) == SplitRing.PopResult.Popped) heads.Add(head);
        return heads;
    }

    [Theory]
    [InlineData(1u, 64ul)]
    [InlineData(2u, 64ul)]
    [InlineData(4u, 128ul)]
    [InlineData(128u, 2112ul)]
    [InlineData(256u, 4160ul)]
    [InlineData(32768u, 524352ul)]
    public void Queue_region_is_header_plus_16_bytes_per_descriptor_aligned_to_64(uint queueSize, ulong bytes) =>
        Assert.Equal(bytes, InflightLayout.SplitQueueRegionBytes(queueSize));

    [Fact]
    public void Field_offsets_are_the_specifications()
    {
        Assert.Equal((0, 8, 10, 12, 14, 16), (InflightLayout.FeaturesOffset, InflightLayout.VersionOffset, InflightLayout.DescNumOffset,
            InflightLayout.LastBatchHeadOffset, InflightLayout.UsedIdxOffset, InflightLayout.SplitHeaderBytes));
        Assert.Equal((0, 6, 8, 16), (InflightLayout.DescInflightOffset, InflightLayout.DescNextOffset, InflightLayout.DescCounterOffset,
            InflightLayout.SplitDescStateBytes));
    }

    [Fact]
    public void Payload_is_two_u64_and_two_u16_padded_to_24_bytes()
    {
        var p = new byte[InflightDescription.Length];
        p.AsSpan().Fill(0xee);
        new InflightDescription(0x1122334455667788, 0x10, 3, 256).Write(p);
        Assert.Equal(Convert.FromHexString("88776655443322111000000000000000030000010000" + "0000"), p);
        Assert.Equal(new InflightDescription(0x1122334455667788, 0x10, 3, 256), InflightDescription.Read(p));
    }

    [Fact]
    public void Created_area_is_zeroed_with_a_version_1_header_per_queue_and_maps_back()
    {
        using var fd = InflightRegion.Create(2, 128, out var description);
        // Each queue gets room for the packed layout (align64(32 + 32 * 128) = 4160), the ring type being unknown yet.
        Assert.Equal(new InflightDescription(2 * 4160, 0, 2, 128), description);
        using var mapping = MappedMemory.MapShared(fd.Fd, description.MmapSize);
        var bytes = new ReadOnlySpan<byte>(mapping.Pointer, (int)description.MmapSize);
        for (int q = 0; q < 2; q++)
        {
            var queue = bytes.Slice(q * 4160, 4160);
            Assert.Equal(1, BitConverter.ToUInt16(queue[8..]));
            Assert.Equal(128, BitConverter.ToUInt16(queue[10..]));
            Assert.True(queue[..8].IndexOfAnyExcept((byte)0) < 0);
            Assert.True(queue[12..].IndexOfAnyExcept((byte)0) < 0);
        }
        using var region = InflightRegion.Map(description, fd);
        Assert.NotNull(region.SplitQueue(1, 128, out _));
        Assert.Null(region.SplitQueue(2, 128, out string? noQueue));
        Assert.Contains("not queue 2", noQueue);
        Assert.Null(region.SplitQueue(0, 64, out string? otherSize));
        Assert.Contains("laid out for queues of 128", otherSize);
    }

    [Fact]
    public void Map_refuses_an_area_larger_than_the_file_or_smaller_than_its_queues()
    {
        using var fd = InflightRegion.Create(1, 16, out var description);
        Assert.Throws<ArgumentException>(() => InflightRegion.Map(description with { NumQueues = 2, MmapSize = 2 * description.MmapSize }, fd));
        Assert.Throws<ArgumentException>(() => InflightRegion.Map(description with { MmapSize = InflightLayout.SplitQueueRegionBytes(16) - 1 }, fd));
        Assert.Throws<ArgumentException>(() => InflightRegion.Map(description with { MmapOffset = 64 }, fd));
        Assert.Throws<ArgumentException>(() => InflightRegion.Map(description with { MmapOffset = ulong.MaxValue - 10 }, fd));
        Assert.Throws<ArgumentException>(() => InflightRegion.Map(description with { QueueSize = 12 }, fd));
        Assert.Throws<ArgumentException>(() => InflightRegion.Create(0, 16, out _));
    }

    [Fact]
    public void Taking_heads_marks_them_in_flight_in_counter_order_and_publishing_clears_them()
    {
        InitRegion();
        var ring = TrackedRing();
        _t.MakeAvailable(2);
        _t.MakeAvailable(5);
        Assert.Equal([2, 5], PopAll(ring));
        Assert.Equal((1, 1), (Inflight(2), Inflight(5)));
        Assert.True(Counter(2) < Counter(5));

        ring.PushUsed(5, 0);
        Assert.Equal(1, Inflight(5));               // not published yet: still in flight
        Assert.Equal(5, LastBatchHead);
        ring.PublishUsed();
        Assert.Equal((1, 0), (Inflight(2), Inflight(5)));
        Assert.Equal((5, 1), (LastBatchHead, UsedIdx));
        Assert.Equal(1, _t.UsedIdx);
    }

    [Fact]
    public void A_batch_links_its_heads_from_last_batch_head_through_next()
    {
        InitRegion();
        var ring = TrackedRing();
        foreach (ushort h in new ushort[] { 4, 9, 1 }) _t.MakeAvailable(h);
        PopAll(ring);
        ring.PushUsed(9, 0);
        ring.PushUsed(1, 0);
        ring.PushUsed(4, 0);
        Assert.Equal(4, LastBatchHead);
        Assert.Equal(1, Next(4));
        Assert.Equal(9, Next(1));
        ring.PublishUsed();
        Assert.Equal((0, 0, 0), (Inflight(4), Inflight(9), Inflight(1)));
        Assert.Equal(3, UsedIdx);
    }

    [Fact]
    public void A_head_returned_twice_in_one_batch_publishes_the_first_batch_before_linking_again()
    {
        InitRegion();
        var ring = TrackedRing();
        _t.MakeAvailable(3);
        PopAll(ring);
        ring.PushUsed(3, 0);
        ring.PushUsed(3, 0);                         // a guest that reuses a head it has not seen returned
        Assert.Equal(1, _t.UsedIdx);                 // the first one was published to keep the list acyclic
        ring.PublishUsed();
        Assert.Equal((2, 2), (_t.UsedIdx, UsedIdx));
    }

    [Fact]
    public void A_torn_last_batch_is_cleared_and_the_rest_resubmitted_in_counter_order_before_new_entries()
    {
        // The previous process took heads 6, 1, 4, 3, 8 (counters 10..14), published a batch {4, 1} (used->idx 0 -> 2)
        // and died before clearing its flags and used_idx.
        foreach (ushort h in new ushort[] { 6, 1, 4, 3, 8 }) _t.MakeAvailable(h);
        InitRegion(usedIdx: 0);
        SetDesc(6, 1, 10);
        SetDesc(1, 1, 11, next: 0);
        SetDesc(4, 1, 12, next: 1);
        SetDesc(3, 1, 13);
        SetDesc(8, 1, 14);
        LastBatchHead = 4;
        _t.SetUsedIdx(2);
        _t.MakeAvailable(11);                        // queued by the guest while the backend was away

        var ring = TrackedRing(lastAvail: 2);        // QEMU sends used->idx as the base
        Assert.Equal((0, 0), (Inflight(4), Inflight(1)));
        Assert.Equal(2, UsedIdx);
        Assert.Equal(5, ring.LastAvailIdx);          // used->idx 2 + three in flight
        Assert.True(ring.HasPending);
        Assert.Equal([6, 3, 8, 11], PopAll(ring));
        Assert.Equal(15ul, Counter(11));             // new requests count on above the recovered ones
        Assert.Equal(6, ring.LastAvailIdx);
    }

    [Fact]
    public void A_batch_published_before_the_crash_reached_no_used_idx_leaves_its_heads_in_flight()
    {
        // Killed after linking {2} but before used->idx moved: the guest never saw it, so it runs again.
        _t.MakeAvailable(2);
        InitRegion(usedIdx: 0);
        SetDesc(2, 1, 0);
        LastBatchHead = 2;
        var ring = TrackedRing();
        Assert.Equal(1, Inflight(2));
        Assert.Equal([2], PopAll(ring));
    }

    [Fact]
    public void Crash_anywhere_in_a_run_recovers_each_request_exactly_once()
    {
        // First process: 4 requests, two completed and published, one pushed but not published, one still running.
        InitRegion();
        foreach (ushort h in new ushort[] { 0, 7, 3, 12 }) _t.MakeAvailable(h);
        var first = TrackedRing();
        PopAll(first);
        first.PushUsed(7, 0);
        first.PushUsed(0, 0);
        first.PublishUsed();
        first.PushUsed(12, 0);                       // killed here
        // Second process.
        var second = TrackedRing(lastAvail: _t.UsedIdx);
        Assert.Equal([3, 12], PopAll(second));
        second.PushUsed(12, 0);
        second.PushUsed(3, 0);
        second.PublishUsed();
        var completed = Enumerable.Range(0, _t.UsedIdx).Select(i => _t.Used(i).Id).ToList();
        Assert.Equal([7u, 0u, 12u, 3u], completed);
        Assert.Equal(0, Enumerable.Range(0, (int)Size).Sum(d => Inflight(d)));
    }

    [Fact]
    public void An_uninitialised_region_is_initialised_empty()
    {
        _t.SetUsedIdx(9);
        _t.SetAvailIdx(9);
        SetDesc(3, 1, 5);                            // garbage under version 0 is not trusted
        var ring = TrackedRing(lastAvail: 9);
        Assert.Equal((1, (ushort)Size, (ushort)9), (Version, DescNum, UsedIdx));
        Assert.Equal(0, Inflight(3));
        Assert.Equal(9, ring.LastAvailIdx);
        Assert.Empty(PopAll(ring));
    }

    [Fact]
    public void An_area_with_nothing_in_flight_follows_the_rings_used_index_whatever_it_says()
    {
        InitRegion(usedIdx: 500);                    // kept from before a ring reset: used->idx is 0 again
        LastBatchHead = 999;
        var ring = TrackedRing();
        Assert.Equal(0, UsedIdx);
        Assert.Equal(0, ring.LastAvailIdx);
    }

    public static TheoryData<string, string> HostileRegions => new()
    {
        { "version", "version 7" },
        { "desc_num", "for 8 descriptors" },
        { "batch too large", "more than the queue holds" },
        { "batch head out of range", "lists descriptor 16" },
        { "batch next out of range", "lists descriptor 999" },
        { "flag", "inflight flag 2" },
    };

    [Theory]
    [MemberData(nameof(HostileRegions))]
    public void A_hostile_region_is_refused_without_touching_anything_outside_it(string what, string error)
    {
        InitRegion();
        switch (what)
        {
            case "version": Version = 7; break;
            case "desc_num": DescNum = 8; break;
            case "batch too large": _t.SetUsedIdx(17); SetDesc(0, 1, 0); break;
            case "batch head out of range": _t.SetUsedIdx(1); LastBatchHead = 16; SetDesc(0, 1, 0); break;
            case "batch next out of range": _t.SetUsedIdx(2); LastBatchHead = 1; SetDesc(1, 1, 0, next: 999); break;
            case "flag": SetDesc(15, 2, 0); break;
        }
        var ring = _t.CreateRing();
        Assert.Contains(error, ring.TrackInflight(new SplitInflightQueue(_region, Size)));
    }
}
