using BlkTarget.Storage.Compression;

namespace BlkTarget.Storage.Tests.Compression;

/// <summary>
/// CRC-32C against published values: the CRC catalogue's check value ("123456789") and the iSCSI examples of
/// RFC 3720 appendix B.4. The image header and the export stream store this checksum, so it is a contract with
/// every image and stream already written.
/// </summary>
public sealed class Crc32CTests
{
    private static byte[] Incrementing(int length) => Enumerable.Range(0, length).Select(i => (byte)i).ToArray();

    [Fact]
    public void The_check_value_of_123456789_is_E3069283() => Assert.Equal(0xE3069283u, Crc32C.Append(0, "123456789"u8));

    [Fact]
    public void Nothing_appended_leaves_the_crc_unchanged()
    {
        Assert.Equal(0u, Crc32C.Append(0, []));
        Assert.Equal(0xE3069283u, Crc32C.Append(0xE3069283u, []));
    }

    [Fact]
    public void One_byte_goes_through_the_byte_path() => Assert.Equal(0xC1D04330u, Crc32C.Append(0, "a"u8));

    [Fact]
    public void Rfc3720_32_bytes_of_zeros() => Assert.Equal(0x8A9136AAu, Crc32C.Append(0, new byte[32]));

    [Fact]
    public void Rfc3720_32_bytes_of_ones() => Assert.Equal(0x62A8AB43u, Crc32C.Append(0, Enumerable.Repeat((byte)0xFF, 32).ToArray()));

    [Fact]
    public void Rfc3720_32_incrementing_bytes() => Assert.Equal(0x46DD794Eu, Crc32C.Append(0, Incrementing(32)));

    [Fact]
    public void Rfc3720_32_decrementing_bytes() =>
        Assert.Equal(0x113FDB5Cu, Crc32C.Append(0, Enumerable.Range(0, 32).Select(i => (byte)(31 - i)).ToArray()));

    [Fact]
    public void Rfc3720_iscsi_read10_command_pdu()
    {
        byte[] pdu =
        [
            0x01, 0xC0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x18,
            0x28, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        Assert.Equal(0xD9963A56u, Crc32C.Append(0, pdu));
    }

    [Fact]
    public void A_long_buffer_with_a_tail_matches_its_known_value()
    {
        // 4099 bytes (512 words and a 3-byte tail) of (31 i + 7) mod 256; value from a bit-at-a-time reference.
        var data = Enumerable.Range(0, 4099).Select(i => (byte)(i * 31 + 7)).ToArray();
        Assert.Equal(0xFF4CFF21u, Crc32C.Append(0, data));
    }

    [Theory]
    [InlineData("123456789", 0xE3069283u)]
    [InlineData("The quick brown fox jumps over the lazy dog", 0x22620404u)]
    [InlineData("The quick brown fox jumps over the lazy dog, twice: the quick brown fox jumps over the lazy dog", 0x48A04C19u)]
    public void Appending_in_two_pieces_at_any_split_equals_one_pass(string text, uint expected)
    {
        var data = System.Text.Encoding.ASCII.GetBytes(text);
        for (int split = 0; split <= data.Length; split++)
            Assert.Equal(expected, Crc32C.Append(Crc32C.Append(0, data.AsSpan(0, split)), data.AsSpan(split)));
    }

    [Fact]
    public void Appending_byte_by_byte_equals_the_rfc_value()
    {
        uint crc = 0;
        foreach (byte b in Incrementing(32)) crc = Crc32C.Append(crc, [b]);
        Assert.Equal(0x46DD794Eu, crc);
    }
}
