using System.Buffers.Binary;

namespace BlkTarget.Vhost.Frontend;

/// <summary>
/// struct virtio_blk_config as a frontend reads it from GET_CONFIG (virtio 1.2 5.2.4). Fields beyond the bytes
/// the backend returned read as zero.
/// </summary>
public sealed record VirtioBlkConfig
{
    /// <summary>Bytes up to and including write_zeroes_may_unmap and its padding (QEMU 7.2 asks for this much).</summary>
    public const int Length = 60;

    /// <summary>Device size in 512-byte sectors.</summary>
    public ulong Capacity { get; init; }
    public uint SizeMax { get; init; }
    public uint SegMax { get; init; }
    public ushort Cylinders { get; init; }
    public byte Heads { get; init; }
    public byte Sectors { get; init; }
    public uint BlockSize { get; init; }
    public byte PhysicalBlockExp { get; init; }
    public byte AlignmentOffset { get; init; }
    public ushort MinIoSize { get; init; }
    public uint OptIoSize { get; init; }
    public byte Writeback { get; init; }
    public ushort NumQueues { get; init; }
    public uint MaxDiscardSectors { get; init; }
    public uint MaxDiscardSeg { get; init; }
    public uint DiscardSectorAlignment { get; init; }
    public uint MaxWriteZeroesSectors { get; init; }
    public uint MaxWriteZeroesSeg { get; init; }
    public byte WriteZeroesMayUnmap { get; init; }

    public ulong CapacityBytes => Capacity * 512;

    public static VirtioBlkConfig Parse(ReadOnlySpan<byte> bytes)
    {
        Span<byte> b = stackalloc byte[Length];
        b.Clear();
        bytes[..Math.Min(bytes.Length, Length)].CopyTo(b);
        return new VirtioBlkConfig
        {
            Capacity = BinaryPrimitives.ReadUInt64LittleEndian(b),
            SizeMax = BinaryPrimitives.ReadUInt32LittleEndian(b[8..]),
            SegMax = BinaryPrimitives.ReadUInt32LittleEndian(b[12..]),
            Cylinders = BinaryPrimitives.ReadUInt16LittleEndian(b[16..]),
            Heads = b[18],
            Sectors = b[19],
            BlockSize = BinaryPrimitives.ReadUInt32LittleEndian(b[20..]),
            PhysicalBlockExp = b[24],
            AlignmentOffset = b[25],
            MinIoSize = BinaryPrimitives.ReadUInt16LittleEndian(b[26..]),
            OptIoSize = BinaryPrimitives.ReadUInt32LittleEndian(b[28..]),
            Writeback = b[32],
            NumQueues = BinaryPrimitives.ReadUInt16LittleEndian(b[34..]),
            MaxDiscardSectors = BinaryPrimitives.ReadUInt32LittleEndian(b[36..]),
            MaxDiscardSeg = BinaryPrimitives.ReadUInt32LittleEndian(b[40..]),
            DiscardSectorAlignment = BinaryPrimitives.ReadUInt32LittleEndian(b[44..]),
            MaxWriteZeroesSectors = BinaryPrimitives.ReadUInt32LittleEndian(b[48..]),
            MaxWriteZeroesSeg = BinaryPrimitives.ReadUInt32LittleEndian(b[52..]),
            WriteZeroesMayUnmap = b[56],
        };
    }

    /// <summary>Offset of the writeback byte, the one field a driver writes (SET_CONFIG, with CONFIG_WCE).</summary>
    public const uint WritebackOffset = 32;
}
