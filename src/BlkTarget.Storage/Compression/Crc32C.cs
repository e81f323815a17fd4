using System.Buffers.Binary;
using System.Runtime.Intrinsics.X86;

namespace BlkTarget.Storage.Compression;

/// <summary>
/// CRC-32C (Castagnoli), the same function as <see cref="Image.ImageHeader.Crc32C"/>, fast enough for whole
/// disks: SSE4.2's crc32 instruction where the CPU has it, a lookup table elsewhere.
/// </summary>
public static class Crc32C
{
    private static readonly uint[] Table = BuildTable();

    /// <summary>The CRC of (the data <paramref name="crc"/> was computed over) followed by <paramref name="data"/>;
    /// start with 0.</summary>
    public static uint Append(uint crc, ReadOnlySpan<byte> data)
    {
        uint state = ~crc;
        if (Sse42.X64.IsSupported)
        {
            ulong wide = state;
            while (data.Length >= 8)
            {
                wide = Sse42.X64.Crc32(wide, BinaryPrimitives.ReadUInt64LittleEndian(data));
                data = data[8..];
            }
            state = (uint)wide;
            foreach (byte b in data) state = Sse42.Crc32(state, b);
            return ~state;
        }
        foreach (byte b in data) state = Table[(byte)(state ^ b)] ^ (state >> 8);
        return ~state;
    }

    private static uint[] BuildTable()
    {
        var table = new uint[256];
        for (uint i = 0; i < 256; i++)
        {
            uint c = i;
            for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82F63B78u & (uint)-(int)(c & 1));
            table[i] = c;
        }
        return table;
    }
}
