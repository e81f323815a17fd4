using BlkTarget.Storage;
using BlkTarget.Vhost.Queues;

namespace BlkTarget.Vhost.Tests;

public unsafe class DescriptorChainTests
{
    private const ushort Next = VirtqDescriptor.FlagNext;
    private const ushort Write = VirtqDescriptor.FlagWrite;
    private const ushort Indirect = VirtqDescriptor.FlagIndirect;

    private static ChainError Walk(TestRing ring, ushort head, out ChainBuffers chain, int capacity = 16)
    {
        var segments = new IoVec[capacity];
        fixed (IoVec* p = segments)
        {
            chain = new ChainBuffers(p, capacity);
            return DescriptorChainWalker.Walk(ring.Memory.Memory, ring.Table, ring.Size, head, ref chain);
        }
    }

    [Fact]
    public void Walks_a_header_data_status_chain()
    {
        using var ring = new TestRing();
        ulong header = ring.Allocate(16), data = ring.Allocate(4096), status = ring.Allocate(1);
        ring.SetDescriptor(0, header, 16, Next, 1);
        ring.SetDescriptor(1, data, 4096, Next | Write, 2);
        ring.SetDescriptor(2, status, 1, Write);
        Assert.Equal(ChainError.None, Walk(ring, 0, out var chain));
        Assert.Equal(3, chain.Count);
        Assert.Equal(1, chain.ReadableCount);
        Assert.Equal(16UL, chain.ReadableBytes);
        Assert.Equal(4097UL, chain.WritableBytes);
        Assert.Equal((nint)ring.Memory.At(status), (nint)chain.LastWritableByte);
    }

    [Fact]
    public void Head_outside_the_table_is_refused()
    {
        using var ring = new TestRing(size: 16);
        Assert.Equal(ChainError.HeadOutOfRange, Walk(ring, 16, out _));
    }

    [Fact]
    public void Next_outside_the_table_is_refused()
    {
        using var ring = new TestRing(size: 16);
        ring.SetDescriptor(0, ring.Allocate(16), 16, Next, 99);
        Assert.Equal(ChainError.NextOutOfRange, Walk(ring, 0, out _));
    }

    [Fact]
    public void A_loop_is_detected()
    {
        using var ring = new TestRing(size: 16);
        ulong buffer = ring.Allocate(16);
        ring.SetDescriptor(0, buffer, 16, Next, 1);
        ring.SetDescriptor(1, buffer, 16, Next, 0);
        Assert.Equal(ChainError.TooLong, Walk(ring, 0, out _));
    }

    [Fact]
    public void A_self_loop_is_detected()
    {
        using var ring = new TestRing(size: 16);
        ring.SetDescriptor(3, ring.Allocate(16), 16, Next, 3);
        Assert.Equal(ChainError.TooLong, Walk(ring, 3, out _));
    }

    [Fact]
    public void Buffers_outside_guest_memory_are_refused()
    {
        using var ring = new TestRing();
        ring.SetDescriptor(0, 0x1000, 16);                         // below the region
        Assert.Equal(ChainError.BadAddress, Walk(ring, 0, out _));
        ring.SetDescriptor(0, TestRing.Base + 0x100_0000 - 8, 16);  // runs past the end
        Assert.Equal(ChainError.BadAddress, Walk(ring, 0, out _));
    }

    [Fact]
    public void Address_plus_length_overflow_is_refused()
    {
        using var ring = new TestRing();
        ring.SetDescriptor(0, ulong.MaxValue - 4, 64);
        Assert.Equal(ChainError.BadAddress, Walk(ring, 0, out _));
    }

    [Fact]
    public void Readable_after_writable_is_refused()
    {
        using var ring = new TestRing();
        ring.SetDescriptor(0, ring.Allocate(16), 16, Next | Write, 1);
        ring.SetDescriptor(1, ring.Allocate(16), 16);
        Assert.Equal(ChainError.ReadableAfterWritable, Walk(ring, 0, out _));
    }

    [Fact]
    public void Indirect_table_is_followed()
    {
        using var ring = new TestRing();
        ulong table = ring.Allocate(3 * 16);
        var entries = (VirtqDescriptor*)ring.Memory.At(table);
        entries[0] = new VirtqDescriptor { Addr = ring.Allocate(16), Len = 16, Flags = Next, Next = 1 };
        entries[1] = new VirtqDescriptor { Addr = ring.Allocate(512), Len = 512, Flags = Next, Next = 2 };
        entries[2] = new VirtqDescriptor { Addr = ring.Allocate(1), Len = 1, Flags = Write };
        ring.SetDescriptor(5, table, 3 * 16, Indirect);
        Assert.Equal(ChainError.None, Walk(ring, 5, out var chain));
        Assert.Equal(3, chain.Count);
        Assert.Equal(528UL, chain.ReadableBytes);
    }

    [Theory]
    [InlineData(0u)]
    [InlineData(24u)]
    [InlineData(16u * 2000)]
    public void Indirect_table_with_bad_length_is_refused(uint length)
    {
        using var ring = new TestRing();
        ring.SetDescriptor(0, ring.Allocate(16 * 2000), length, Indirect);
        Assert.Equal(ChainError.BadIndirectLength, Walk(ring, 0, out _));
    }

    [Fact]
    public void Nested_indirect_is_refused()
    {
        using var ring = new TestRing();
        ulong table = ring.Allocate(16);
        *(VirtqDescriptor*)ring.Memory.At(table) = new VirtqDescriptor { Addr = table, Len = 16, Flags = Indirect };
        ring.SetDescriptor(0, table, 16, Indirect);
        Assert.Equal(ChainError.NestedIndirect, Walk(ring, 0, out _));
    }

    [Fact]
    public void Indirect_with_next_or_after_other_descriptors_is_refused()
    {
        using var ring = new TestRing();
        ulong table = ring.Allocate(16);
        *(VirtqDescriptor*)ring.Memory.At(table) = new VirtqDescriptor { Addr = ring.Allocate(1), Len = 1, Flags = Write };
        ring.SetDescriptor(0, table, 16, Indirect | Next, 1);
        Assert.Equal(ChainError.MisplacedIndirect, Walk(ring, 0, out _));
        ring.SetDescriptor(0, ring.Allocate(16), 16, Next, 1);
        ring.SetDescriptor(1, table, 16, Indirect);
        Assert.Equal(ChainError.MisplacedIndirect, Walk(ring, 0, out _));
    }

    [Fact]
    public void Indirect_table_outside_memory_is_refused()
    {
        using var ring = new TestRing();
        ring.SetDescriptor(0, 0x10, 32, Indirect);
        Assert.Equal(ChainError.BadAddress, Walk(ring, 0, out _));
    }

    [Fact]
    public void Loop_inside_an_indirect_table_is_detected()
    {
        using var ring = new TestRing();
        ulong table = ring.Allocate(32);
        var entries = (VirtqDescriptor*)ring.Memory.At(table);
        entries[0] = new VirtqDescriptor { Addr = ring.Allocate(16), Len = 16, Flags = Next, Next = 1 };
        entries[1] = new VirtqDescriptor { Addr = ring.Allocate(16), Len = 16, Flags = Next, Next = 0 };
        ring.SetDescriptor(0, table, 32, Indirect);
        Assert.Equal(ChainError.TooLong, Walk(ring, 0, out _));
    }

    [Fact]
    public void More_segments_than_capacity_are_counted_and_the_status_byte_still_found()
    {
        using var ring = new TestRing();
        for (int i = 0; i < 6; i++) ring.SetDescriptor(i, ring.Allocate(16), 16, (ushort)(Next | (i > 0 ? Write : 0)), (ushort)(i + 1));
        ulong status = ring.Allocate(1);
        ring.SetDescriptor(6, status, 1, Write);
        Assert.Equal(ChainError.None, Walk(ring, 0, out var chain, capacity: 4));
        Assert.True(chain.Overflowed);
        Assert.Equal(4, chain.Count);
        Assert.Equal((nint)ring.Memory.At(status), (nint)chain.LastWritableByte);
    }

    [Fact]
    public void A_buffer_spanning_two_adjacent_regions_is_split()
    {
        using var ring = new TestRing(memorySize: 0x20_0000);
        ring.Memory.AddRegion(TestRing.Base + 0x20_0000, 0x1000);
        ring.SetDescriptor(0, TestRing.Base + 0x20_0000 - 0x100, 0x200, Write);
        Assert.Equal(ChainError.None, Walk(ring, 0, out var chain));
        Assert.Equal(2, chain.Count);
        Assert.Equal(0x200UL, chain.WritableBytes);
    }
}
