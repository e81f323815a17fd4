using BlkTarget.Vhost.Protocol;

namespace BlkTarget.Vhost.Tests;

public class ProtocolEncodingTests
{
    [Fact]
    public void Header_round_trips_little_endian()
    {
        var bytes = new byte[12];
        new MessageHeader(VhostUserRequest.SetVringAddr, MessageHeader.Version | MessageHeader.NeedReplyFlag, 40).Write(bytes);
        Assert.Equal(new byte[] { 9, 0, 0, 0, 9, 0, 0, 0, 40, 0, 0, 0 }, bytes);
        var header = MessageHeader.Read(bytes);
        Assert.Equal(VhostUserRequest.SetVringAddr, header.Request);
        Assert.True(header.NeedsReply);
        Assert.True(header.HasValidVersion);
        Assert.False(header.IsReply);
    }

    [Fact]
    public void Vring_address_keeps_wire_order_desc_used_avail()
    {
        var bytes = new byte[VringAddress.Length];
        new VringAddress(1, 0, 0x1000, 0x2000, 0x3000, 0).Write(bytes);
        Assert.Equal(0x1000UL, BitConverter.ToUInt64(bytes, 8));
        Assert.Equal(0x2000UL, BitConverter.ToUInt64(bytes, 16));
        Assert.Equal(0x3000UL, BitConverter.ToUInt64(bytes, 24));
        var parsed = VringAddress.Read(bytes);
        Assert.Equal(0x2000UL, parsed.UsedUserAddr);
        Assert.Equal(0x3000UL, parsed.AvailUserAddr);
    }

    [Fact]
    public void Memory_table_round_trips()
    {
        var bytes = new byte[MemoryTablePayload.HeaderLength + 2 * MemoryRegionDescription.Length];
        MemoryRegionDescription[] regions = [new(0, 0x1000, 0x7000, 0), new(0x100000, 0x2000, 0x9000, 0x1000)];
        int length = MemoryTablePayload.Write(bytes, regions);
        Assert.Equal(bytes.Length, length);
        Assert.Equal(regions, MemoryTablePayload.Read(bytes));
    }

    [Theory]
    [InlineData(4)]                   // shorter than the count field
    [InlineData(8 + 32)]              // says 2 regions, holds 1
    public void Malformed_memory_tables_are_rejected(int length)
    {
        var bytes = new byte[length];
        if (length >= 8) bytes[0] = 2;
        Assert.Null(MemoryTablePayload.Read(bytes));
    }

    [Fact]
    public void Memory_table_with_more_than_eight_regions_is_rejected()
    {
        var bytes = new byte[8 + 9 * 32];
        bytes[0] = 9;
        Assert.Null(MemoryTablePayload.Read(bytes));
    }

    [Fact]
    public void Single_region_payload_skips_padding()
    {
        var bytes = new byte[SingleRegionPayload.Length];
        SingleRegionPayload.Write(bytes, new MemoryRegionDescription(1, 2, 3, 4));
        Assert.Equal(new MemoryRegionDescription(1, 2, 3, 4), SingleRegionPayload.Read(bytes));
        Assert.Null(SingleRegionPayload.Read(bytes.AsSpan(0, 39)));
    }

    [Fact]
    public void Config_and_vring_state_round_trip()
    {
        var bytes = new byte[12];
        new ConfigHeader(4, 60, 1).Write(bytes);
        Assert.Equal(new ConfigHeader(4, 60, 1), ConfigHeader.Read(bytes));
        new VringState(3, 256).Write(bytes);
        Assert.Equal(new VringState(3, 256), VringState.Read(bytes));
    }
}
