using System.Buffers.Binary;
using BlkTarget.Storage;

namespace BlkTarget.Vhost.Blk;

/// <summary>
/// struct virtio_blk_config, laid out per virtio 1.2 5.2.4 (offsets below). Built from the backend's
/// properties and the export options; the guest may change only the writeback byte.
/// </summary>
public sealed class BlkConfigSpace
{
    public const int Size = 60;                 // up to and including write_zeroes_may_unmap + padding
    private const int OffCapacity = 0;
    private const int OffSizeMax = 8;
    private const int OffSegMax = 12;
    private const int OffBlkSize = 20;
    private const int OffPhysicalBlockExp = 24;
    private const int OffMinIoSize = 26;
    private const int OffOptIoSize = 28;
    public const int OffWriteback = 32;
    private const int OffNumQueues = 34;
    private const int OffMaxDiscardSectors = 36;
    private const int OffMaxDiscardSeg = 40;
    private const int OffDiscardSectorAlignment = 44;
    private const int OffMaxWriteZeroesSectors = 48;
    private const int OffMaxWriteZeroesSeg = 52;
    private const int OffWriteZeroesMayUnmap = 56;

    private readonly byte[] _bytes = new byte[Size];
    private readonly byte _defaultWriteback;

    public BlkConfigSpace(BlockDeviceInfo info, BlkOptions options)
    {
        var b = _bytes.AsSpan();
        uint blockSize = info.BlockSize;
        BinaryPrimitives.WriteUInt64LittleEndian(b[OffCapacity..], info.SizeBytes / VirtioBlk.SectorSize);
        BinaryPrimitives.WriteUInt32LittleEndian(b[OffSizeMax..], options.SizeMax);
        BinaryPrimitives.WriteUInt32LittleEndian(b[OffSegMax..], options.SegMax);
        BinaryPrimitives.WriteUInt32LittleEndian(b[OffBlkSize..], blockSize);
        b[OffPhysicalBlockExp] = 0;                             // physical block = logical block
        BinaryPrimitives.WriteUInt16LittleEndian(b[OffMinIoSize..], 1);   // in logical blocks
        BinaryPrimitives.WriteUInt32LittleEndian(b[OffOptIoSize..], 0);
        _defaultWriteback = options.WriteCache ? (byte)1 : (byte)0;
        b[OffWriteback] = _defaultWriteback;
        BinaryPrimitives.WriteUInt16LittleEndian(b[OffNumQueues..], (ushort)options.Queues);
        // Range limits: ours, narrowed to what the medium takes in one request; alignment: its deallocation unit.
        if (info.SupportsDiscard)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(b[OffMaxDiscardSectors..], Narrow(options.MaxRangeSectors, info.MaxDiscardBytes));
            BinaryPrimitives.WriteUInt32LittleEndian(b[OffMaxDiscardSeg..], options.MaxRangeSegments);
            BinaryPrimitives.WriteUInt32LittleEndian(b[OffDiscardSectorAlignment..], Math.Max(blockSize, info.DiscardGranularity) / VirtioBlk.SectorSize);
        }
        if (info.SupportsWriteZeroes)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(b[OffMaxWriteZeroesSectors..], Narrow(options.MaxRangeSectors, info.MaxWriteZeroesBytes));
            BinaryPrimitives.WriteUInt32LittleEndian(b[OffMaxWriteZeroesSeg..], options.MaxRangeSegments);
            b[OffWriteZeroesMayUnmap] = info.SupportsDiscard && info.ZeroesCanUnmap ? (byte)1 : (byte)0;
        }
    }

    /// <summary>Our sector limit, or the medium's (bytes; 0: none) where that is lower.</summary>
    private static uint Narrow(uint sectors, ulong mediumBytes) =>
        mediumBytes == 0 ? sectors : (uint)Math.Min(sectors, mediumBytes / VirtioBlk.SectorSize);

    /// <summary>Whether the guest currently has the write cache enabled (writeback).</summary>
    public bool WriteCacheEnabled => Volatile.Read(ref _bytes[OffWriteback]) != 0;

    /// <summary>Copies config bytes [offset, offset+destination.Length); bytes past the struct read as zero.</summary>
    public void Read(uint offset, Span<byte> destination)
    {
        destination.Clear();
        if (offset >= Size) return;
        lock (_bytes)       // never a torn capacity while a resize writes it (control path only)
        {
            var available = _bytes.AsSpan((int)offset);
            available[..Math.Min(available.Length, destination.Length)].CopyTo(destination);
        }
    }

    /// <summary>The capacity field, in 512-byte sectors.</summary>
    public ulong CapacitySectors
    {
        get { lock (_bytes) return BinaryPrimitives.ReadUInt64LittleEndian(_bytes.AsSpan(OffCapacity)); }
    }

    /// <summary>Sets capacity (virtio 1.2 5.2.4) to <paramref name="sizeBytes"/> / 512, after the disk grew.</summary>
    public void SetCapacity(ulong sizeBytes)
    {
        lock (_bytes) BinaryPrimitives.WriteUInt64LittleEndian(_bytes.AsSpan(OffCapacity), sizeBytes / VirtioBlk.SectorSize);
    }

    /// <summary>Applies a guest write. Only the writeback byte is writable; false for anything else.</summary>
    public bool Write(uint offset, ReadOnlySpan<byte> data)
    {
        if (offset != OffWriteback || data.Length != 1 || data[0] > 1) return false;
        Volatile.Write(ref _bytes[OffWriteback], data[0]);
        return true;
    }

    /// <summary>Device reset: the guest's writeback choice lasts until then, afterwards the configured default applies.</summary>
    public void Reset() => Volatile.Write(ref _bytes[OffWriteback], _defaultWriteback);
}
