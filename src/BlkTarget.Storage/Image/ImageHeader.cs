using System.Buffers.Binary;
using BlkTarget.Storage.Compression;

namespace BlkTarget.Storage.Image;

/// <summary>
/// The 4 KiB header at offset 0 of a BlkTarget sparse image (docs/image-format.md has the byte-by-byte layout).
/// Every field is little-endian; a CRC-32C over the first 124 bytes guards against torn or foreign headers.
/// </summary>
public sealed record ImageHeader
{
    public const int Length = 4096;
    public const uint CurrentVersion = 1;
    public const uint MinClusterSize = 4096;
    public const uint MaxClusterSize = 2 << 20;
    public const uint DefaultClusterSize = 64 << 10;
    /// <summary>Largest virtual size: the in-memory map must stay reasonable (8 bytes per cluster).</summary>
    public const ulong MaxVirtualSize = 1UL << 50;
    public static ReadOnlySpan<byte> Magic => "BLKTIMG\0"u8;

    private const int ChecksummedBytes = 124;
    private const int OffMagic = 0, OffVersion = 8, OffHeaderSize = 12, OffVirtualSize = 16, OffClusterSize = 24, OffFlags = 28,
        OffMapOffset = 32, OffMapEntries = 40, OffMapBytes = 48, OffDataOffset = 56, OffCrc = 124;

    public uint Version { get; init; } = CurrentVersion;
    public required ulong VirtualSize { get; init; }
    public required uint ClusterSize { get; init; }
    public uint Flags { get; init; }
    public required ulong MapOffset { get; init; }
    public required ulong MapEntries { get; init; }
    /// <summary>Bytes reserved for the map on disk (entries × 8 rounded up to whole clusters).</summary>
    public required ulong MapBytes { get; init; }
    /// <summary>Where the first data cluster may start; physical cluster indexes count from offset 0.</summary>
    public required ulong DataOffset { get; init; }

    public int ClusterShift => System.Numerics.BitOperations.Log2(ClusterSize);
    /// <summary>The lowest physical cluster index data may use (every lower cluster is header or map).</summary>
    public ulong FirstDataCluster => DataOffset / ClusterSize;

    /// <summary>The layout for a new image of <paramref name="virtualSize"/> bytes.</summary>
    public static ImageHeader ForNewImage(ulong virtualSize, uint clusterSize)
    {
        Validate(virtualSize, clusterSize);
        ulong entries = (virtualSize + clusterSize - 1) / clusterSize;
        ulong mapBytes = (entries * 8 + clusterSize - 1) / clusterSize * clusterSize;
        ulong mapOffset = Math.Max(clusterSize, (ulong)Length);
        return new ImageHeader
        {
            VirtualSize = virtualSize,
            ClusterSize = clusterSize,
            MapOffset = mapOffset,
            MapEntries = entries,
            MapBytes = mapBytes,
            DataOffset = mapOffset + mapBytes,
        };
    }

    public static void Validate(ulong virtualSize, uint clusterSize)
    {
        if (clusterSize < MinClusterSize || clusterSize > MaxClusterSize || (clusterSize & (clusterSize - 1)) != 0)
            throw new ImageFormatException($"cluster size must be a power of two between {MinClusterSize} and {MaxClusterSize}, not {clusterSize}");
        if (virtualSize == 0 || virtualSize % 512 != 0) throw new ImageFormatException($"virtual size must be a positive multiple of 512 bytes, not {virtualSize}");
        if (virtualSize > MaxVirtualSize) throw new ImageFormatException($"virtual size {virtualSize} exceeds the maximum of {MaxVirtualSize}");
    }

    public void Write(Span<byte> b)
    {
        b[..Length].Clear();
        Magic.CopyTo(b);
        BinaryPrimitives.WriteUInt32LittleEndian(b[OffVersion..], Version);
        BinaryPrimitives.WriteUInt32LittleEndian(b[OffHeaderSize..], Length);
        BinaryPrimitives.WriteUInt64LittleEndian(b[OffVirtualSize..], VirtualSize);
        BinaryPrimitives.WriteUInt32LittleEndian(b[OffClusterSize..], ClusterSize);
        BinaryPrimitives.WriteUInt32LittleEndian(b[OffFlags..], Flags);
        BinaryPrimitives.WriteUInt64LittleEndian(b[OffMapOffset..], MapOffset);
        BinaryPrimitives.WriteUInt64LittleEndian(b[OffMapEntries..], MapEntries);
        BinaryPrimitives.WriteUInt64LittleEndian(b[OffMapBytes..], MapBytes);
        BinaryPrimitives.WriteUInt64LittleEndian(b[OffDataOffset..], DataOffset);
        BinaryPrimitives.WriteUInt32LittleEndian(b[OffCrc..], Crc32C.Append(0, b[..ChecksummedBytes]));
    }

    /// <summary>Parses and validates a header; throws <see cref="ImageFormatException"/> saying what is wrong.</summary>
    public static ImageHeader Read(ReadOnlySpan<byte> b, ulong fileSize)
    {
        if (b.Length < Length || fileSize < Length) throw new ImageFormatException("file is too short to be a BlkTarget image");
        if (!b[..8].SequenceEqual(Magic)) throw new ImageFormatException("not a BlkTarget image (wrong magic)");
        uint version = BinaryPrimitives.ReadUInt32LittleEndian(b[OffVersion..]);
        if (version != CurrentVersion) throw new ImageFormatException($"unsupported image version {version} (this build reads version {CurrentVersion})");
        if (BinaryPrimitives.ReadUInt32LittleEndian(b[OffCrc..]) != Crc32C.Append(0, b[..ChecksummedBytes]))
            throw new ImageFormatException("header checksum mismatch (corrupt header)");
        if (BinaryPrimitives.ReadUInt32LittleEndian(b[OffHeaderSize..]) != Length) throw new ImageFormatException("unexpected header size");
        var header = new ImageHeader
        {
            Version = version,
            VirtualSize = BinaryPrimitives.ReadUInt64LittleEndian(b[OffVirtualSize..]),
            ClusterSize = BinaryPrimitives.ReadUInt32LittleEndian(b[OffClusterSize..]),
            Flags = BinaryPrimitives.ReadUInt32LittleEndian(b[OffFlags..]),
            MapOffset = BinaryPrimitives.ReadUInt64LittleEndian(b[OffMapOffset..]),
            MapEntries = BinaryPrimitives.ReadUInt64LittleEndian(b[OffMapEntries..]),
            MapBytes = BinaryPrimitives.ReadUInt64LittleEndian(b[OffMapBytes..]),
            DataOffset = BinaryPrimitives.ReadUInt64LittleEndian(b[OffDataOffset..]),
        };
        Validate(header.VirtualSize, header.ClusterSize);
        var expected = ForNewImage(header.VirtualSize, header.ClusterSize);
        if (header.MapOffset != expected.MapOffset || header.MapEntries != expected.MapEntries ||
            header.MapBytes != expected.MapBytes || header.DataOffset != expected.DataOffset)
            throw new ImageFormatException("inconsistent layout fields in the header (corrupt header)");
        if (fileSize < header.DataOffset) throw new ImageFormatException($"file is truncated: {fileSize} bytes, the map alone ends at {header.DataOffset}");
        if (header.Flags != 0) throw new ImageFormatException($"unknown header flags 0x{header.Flags:x}");
        return header;
    }
}

/// <summary>An image that cannot be used as it is: foreign, truncated or corrupt. The message says why.</summary>
public sealed class ImageFormatException(string message) : IOException(message);
