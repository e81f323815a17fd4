using BlkTarget.Vhost.Frontend;

namespace BlkTarget.IntegrationTests;

/// <summary>Deterministic test patterns and comparisons.</summary>
internal static class TestData
{
    public const byte Ok = 0;
    public const byte IoErr = 1;
    public const byte Unsupp = 2;

    /// <summary>A READ(10)/WRITE(10)-shaped CDB (SBC-3 5.11/5.32): opcode, LBA (big-endian), transfer length.</summary>
    public static byte[] Rw10(byte opcode, uint lba, ushort blocks)
    {
        var c = new byte[10];
        c[0] = opcode;
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(c.AsSpan(2), lba);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt16BigEndian(c.AsSpan(7), blocks);
        return c;
    }

    public static void Fill(Span<byte> destination, int seed) => new Random(seed).NextBytes(destination);

    public static byte[] Random(int length, int seed)
    {
        var bytes = new byte[length];
        Fill(bytes, seed);
        return bytes;
    }

    /// <summary>Concatenates the contents of several guest buffers.</summary>
    public static byte[] Gather(ReadOnlySpan<GuestBuffer> buffers)
    {
        var result = new List<byte>();
        foreach (var b in buffers) result.AddRange(b.Span.ToArray());
        return result.ToArray();
    }

    /// <summary>Cuts one guest buffer into pieces of the given sizes (which must add up to at most its length).</summary>
    public static GuestBuffer[] Split(GuestBuffer buffer, params uint[] sizes)
    {
        var pieces = new GuestBuffer[sizes.Length];
        uint offset = 0;
        for (int i = 0; i < sizes.Length; i++)
        {
            pieces[i] = buffer.Slice(offset, sizes[i]);
            offset += sizes[i];
        }
        return pieces;
    }

    public static bool AllZero(ReadOnlySpan<byte> bytes) => !bytes.ContainsAnyExcept((byte)0);
}
