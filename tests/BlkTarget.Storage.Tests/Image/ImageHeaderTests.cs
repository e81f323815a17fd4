using BlkTarget.Storage.Image;

namespace BlkTarget.Storage.Tests.Image;

/// <summary>
/// The image header is a contract with every image already on disk: its bytes are written out here as
/// docs/image-format.md shows them ("Header", the 10 GiB example), never derived from the code under test.
/// </summary>
public sealed class ImageHeaderTests
{
    /// <summary>Bytes 0-127 of the header of a 10 GiB image with 64 KiB clusters (docs/image-format.md).</summary>
    private static readonly byte[] TenGiBHeader =
    [
        // 0x00: magic "BLKTIMG\0", version 1, header size 4096
        0x42, 0x4C, 0x4B, 0x54, 0x49, 0x4D, 0x47, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00,
        // 0x10: virtual size 10 GiB (0x2_8000_0000), cluster size 65536, flags 0
        0x00, 0x00, 0x00, 0x80, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,
        // 0x20: map offset 65536, map entries 163840 (0x28000)
        0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00,
        // 0x30: map bytes 1310720 (0x14_0000), data offset 1376256 (0x15_0000)
        0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x15, 0x00, 0x00, 0x00, 0x00, 0x00,
        // 0x40-0x7B: reserved, zero
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        // 0x70: reserved, then at 0x7C the CRC-32C of bytes 0-123: 0x8B08C6A8
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xA8, 0xC6, 0x08, 0x8B,
    ];

    private const ulong TenGiB = 10UL << 30;
    private const ulong TenGiBDataOffset = 1376256;

    [Fact]
    public void A_new_10_GiB_image_with_64_KiB_clusters_has_exactly_the_documented_header()
    {
        var written = new byte[4096];
        written.AsSpan().Fill(0xEE);   // Write must clear everything it does not set

        ImageHeader.ForNewImage(TenGiB, 65536).Write(written);

        Assert.Equal(TenGiBHeader, written[..128]);
        Assert.True(written.AsSpan(128).IndexOfAnyExcept((byte)0) < 0, "bytes 128-4095 must be zero");
    }

    [Fact]
    public void The_documented_header_reads_back_as_its_fields()
    {
        var bytes = new byte[4096];
        TenGiBHeader.CopyTo(bytes, 0);

        var header = ImageHeader.Read(bytes, fileSize: TenGiBDataOffset);

        Assert.Equal(1u, header.Version);
        Assert.Equal(TenGiB, header.VirtualSize);
        Assert.Equal(65536u, header.ClusterSize);
        Assert.Equal(0u, header.Flags);
        Assert.Equal(65536UL, header.MapOffset);
        Assert.Equal(163840UL, header.MapEntries);
        Assert.Equal(1310720UL, header.MapBytes);
        Assert.Equal(TenGiBDataOffset, header.DataOffset);
        Assert.Equal(21UL, header.FirstDataCluster);
    }

    [Theory]
    [InlineData(20)]    // a bit of the virtual size
    [InlineData(100)]   // reserved, but covered by the checksum
    [InlineData(124)]   // the checksum itself
    public void A_flipped_bit_in_the_checksummed_bytes_is_refused(int offset)
    {
        var bytes = new byte[4096];
        TenGiBHeader.CopyTo(bytes, 0);
        bytes[offset] ^= 0x01;

        var error = Assert.Throws<ImageFormatException>(() => ImageHeader.Read(bytes, fileSize: TenGiBDataOffset));
        Assert.Equal("header checksum mismatch (corrupt header)", error.Message);
    }

    [Fact]
    public void Bytes_past_the_checksum_are_ignored()
    {
        var bytes = new byte[4096];
        TenGiBHeader.CopyTo(bytes, 0);
        bytes[128] = 0xFF;
        bytes[4095] = 0xFF;

        Assert.Equal(TenGiB, ImageHeader.Read(bytes, fileSize: TenGiBDataOffset).VirtualSize);
    }
}
