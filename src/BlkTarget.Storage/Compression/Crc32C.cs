using System.Buffers.Binary;
using System.Numerics;

namespace BlkTarget.Storage.Compression;

/// <summary>
/// CRC-32C (Castagnoli: reflected polynomial 0x82F63B78, initial value and final XOR 0xFFFFFFFF, as in iSCSI,
/// ext4 and NVMe): the checksum of the image header and of the export stream. Fast enough for whole disks: the
/// BCL's <see cref="BitOperations.Crc32C(uint, ulong)"/> uses the CPU's crc32 instruction where there is one.
/// </summary>
public static class Crc32C
{
    /// <summary>
    /// The CRC of (the bytes <paramref name="crc"/> was computed over) followed by <paramref name="data"/>; start
    /// with 0, so <c>Append(Append(0, a), b) == Append(0, a + b)</c>. Check value: "123456789" gives 0xE3069283.
    /// </summary>
    public static uint Append(uint crc, ReadOnlySpan<byte> data)
    {
        // BitOperations.Crc32C is the bare register update: the initial and final inversion are ours to add.
        uint state = ~crc;
        while (data.Length >= sizeof(ulong))
        {
            // The ulong overload consumes its argument least significant byte first, i.e. in memory order
            // only when read little-endian.
            state = BitOperations.Crc32C(state, BinaryPrimitives.ReadUInt64LittleEndian(data));
            data = data[sizeof(ulong)..];
        }
        foreach (byte b in data) state = BitOperations.Crc32C(state, b);
        return ~state;
    }
}
