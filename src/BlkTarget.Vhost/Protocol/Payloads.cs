using System.Buffers.Binary;

namespace BlkTarget.Vhost.Protocol;

/// <summary>Payload of SET_VRING_NUM / SET_VRING_BASE / GET_VRING_BASE / SET_VRING_ENABLE: {u32 index, u32 num}.</summary>
public readonly record struct VringState(uint Index, uint Num)
{
    public const int Length = 8;

    public static VringState Read(ReadOnlySpan<byte> p) =>
        new(BinaryPrimitives.ReadUInt32LittleEndian(p), BinaryPrimitives.ReadUInt32LittleEndian(p[4..]));

    public void Write(Span<byte> p)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(p, Index);
        BinaryPrimitives.WriteUInt32LittleEndian(p[4..], Num);
    }
}

/// <summary>
/// Payload of SET_VRING_ADDR. The three ring addresses are frontend (QEMU process) virtual addresses;
/// only LogGuestAddr is guest-physical. Note the wire order: descriptor, used, available.
/// </summary>
public readonly record struct VringAddress(uint Index, uint Flags, ulong DescUserAddr, ulong UsedUserAddr, ulong AvailUserAddr, ulong LogGuestAddr)
{
    public const int Length = 40;
    public const uint LogFlag = 1;

    public static VringAddress Read(ReadOnlySpan<byte> p) => new(
        BinaryPrimitives.ReadUInt32LittleEndian(p),
        BinaryPrimitives.ReadUInt32LittleEndian(p[4..]),
        BinaryPrimitives.ReadUInt64LittleEndian(p[8..]),
        BinaryPrimitives.ReadUInt64LittleEndian(p[16..]),
        BinaryPrimitives.ReadUInt64LittleEndian(p[24..]),
        BinaryPrimitives.ReadUInt64LittleEndian(p[32..]));

    public void Write(Span<byte> p)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(p, Index);
        BinaryPrimitives.WriteUInt32LittleEndian(p[4..], Flags);
        BinaryPrimitives.WriteUInt64LittleEndian(p[8..], DescUserAddr);
        BinaryPrimitives.WriteUInt64LittleEndian(p[16..], UsedUserAddr);
        BinaryPrimitives.WriteUInt64LittleEndian(p[24..], AvailUserAddr);
        BinaryPrimitives.WriteUInt64LittleEndian(p[32..], LogGuestAddr);
    }
}

/// <summary>One memory region description: {u64 guest_phys_addr, u64 memory_size, u64 userspace_addr, u64 mmap_offset}.</summary>
public readonly record struct MemoryRegionDescription(ulong GuestPhysAddr, ulong Size, ulong UserAddr, ulong MmapOffset)
{
    public const int Length = 32;

    public static MemoryRegionDescription Read(ReadOnlySpan<byte> p) => new(
        BinaryPrimitives.ReadUInt64LittleEndian(p),
        BinaryPrimitives.ReadUInt64LittleEndian(p[8..]),
        BinaryPrimitives.ReadUInt64LittleEndian(p[16..]),
        BinaryPrimitives.ReadUInt64LittleEndian(p[24..]));

    public void Write(Span<byte> p)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(p, GuestPhysAddr);
        BinaryPrimitives.WriteUInt64LittleEndian(p[8..], Size);
        BinaryPrimitives.WriteUInt64LittleEndian(p[16..], UserAddr);
        BinaryPrimitives.WriteUInt64LittleEndian(p[24..], MmapOffset);
    }
}

/// <summary>SET_MEM_TABLE: {u32 nregions, u32 padding, regions[nregions]}.</summary>
public static class MemoryTablePayload
{
    public const int HeaderLength = 8;
    public const int MaxRegions = 8;

    /// <summary>Parses the region list; null when the payload is malformed (count and size disagree, too many).</summary>
    public static MemoryRegionDescription[]? Read(ReadOnlySpan<byte> p)
    {
        if (p.Length < HeaderLength) return null;
        uint count = BinaryPrimitives.ReadUInt32LittleEndian(p);
        if (count > MaxRegions || p.Length < HeaderLength + count * MemoryRegionDescription.Length) return null;
        var regions = new MemoryRegionDescription[count];
        for (int i = 0; i < count; i++)
            regions[i] = MemoryRegionDescription.Read(p.Slice(HeaderLength + i * MemoryRegionDescription.Length));
        return regions;
    }

    public static int Write(Span<byte> p, ReadOnlySpan<MemoryRegionDescription> regions)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(p, (uint)regions.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(p[4..], 0);
        for (int i = 0; i < regions.Length; i++) regions[i].Write(p.Slice(HeaderLength + i * MemoryRegionDescription.Length));
        return HeaderLength + regions.Length * MemoryRegionDescription.Length;
    }
}

/// <summary>ADD_MEM_REG / REM_MEM_REG: {u64 padding, region}.</summary>
public static class SingleRegionPayload
{
    public const int Length = 8 + MemoryRegionDescription.Length;

    public static MemoryRegionDescription? Read(ReadOnlySpan<byte> p) =>
        p.Length < Length ? null : MemoryRegionDescription.Read(p[8..]);

    public static void Write(Span<byte> p, MemoryRegionDescription region)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(p, 0);
        region.Write(p[8..]);
    }
}

/// <summary>GET_CONFIG / SET_CONFIG: {u32 offset, u32 size, u32 flags, u8 payload[size]}.</summary>
public readonly record struct ConfigHeader(uint Offset, uint Size, uint Flags)
{
    public const int Length = 12;
    /// <summary>The largest config space we serve; SPDK's initiator asks for this much.</summary>
    public const int MaxConfigSize = 256;

    public static ConfigHeader Read(ReadOnlySpan<byte> p) => new(
        BinaryPrimitives.ReadUInt32LittleEndian(p),
        BinaryPrimitives.ReadUInt32LittleEndian(p[4..]),
        BinaryPrimitives.ReadUInt32LittleEndian(p[8..]));

    public void Write(Span<byte> p)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(p, Offset);
        BinaryPrimitives.WriteUInt32LittleEndian(p[4..], Size);
        BinaryPrimitives.WriteUInt32LittleEndian(p[8..], Flags);
    }
}

/// <summary>Bits of the u64 payload of SET_VRING_KICK / SET_VRING_CALL / SET_VRING_ERR.</summary>
public static class VringFdPayload
{
    public const ulong IndexMask = 0xff;
    /// <summary>VHOST_USER_VRING_NOFD_MASK: no descriptor attached.</summary>
    public const ulong NoFdFlag = 0x100;
}

/// <summary>
/// GET_INFLIGHT_FD / SET_INFLIGHT_FD payload (VhostUserInflight): {u64 mmap_size, u64 mmap_offset, u16 num_queues,
/// u16 queue_size}, padded to 24 bytes as QEMU sends it. Sizes and offsets in bytes; the area's fd travels as
/// SCM_RIGHTS with the message.
/// </summary>
public readonly record struct InflightDescription(ulong MmapSize, ulong MmapOffset, ushort NumQueues, ushort QueueSize)
{
    /// <summary>Bytes that carry fields; a shorter payload is malformed.</summary>
    public const int MinLength = 20;
    /// <summary>Bytes written (sizeof(VhostUserInflight) with its tail padding).</summary>
    public const int Length = 24;

    public static InflightDescription Read(ReadOnlySpan<byte> p) => new(
        BinaryPrimitives.ReadUInt64LittleEndian(p),
        BinaryPrimitives.ReadUInt64LittleEndian(p[8..]),
        BinaryPrimitives.ReadUInt16LittleEndian(p[16..]),
        BinaryPrimitives.ReadUInt16LittleEndian(p[18..]));

    public void Write(Span<byte> p)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(p, MmapSize);
        BinaryPrimitives.WriteUInt64LittleEndian(p[8..], MmapOffset);
        BinaryPrimitives.WriteUInt16LittleEndian(p[16..], NumQueues);
        BinaryPrimitives.WriteUInt16LittleEndian(p[18..], QueueSize);
        p[20..Length].Clear();
    }
}

/// <summary>Payload of SET_LOG_BASE with LOG_SHMFD (VhostUserLog): {u64 mmap_size, u64 mmap_offset}, bytes of the log
/// bitmap and where it starts in the fd sent with the message.</summary>
public readonly record struct LogDescription(ulong MmapSize, ulong MmapOffset)
{
    public const int Length = 16;

    public static LogDescription Read(ReadOnlySpan<byte> p) =>
        new(BinaryPrimitives.ReadUInt64LittleEndian(p), BinaryPrimitives.ReadUInt64LittleEndian(p[8..]));

    public void Write(Span<byte> p)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(p, MmapSize);
        BinaryPrimitives.WriteUInt64LittleEndian(p[8..], MmapOffset);
    }
}
