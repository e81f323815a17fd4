using System.Runtime.InteropServices;

namespace BlkTarget.Vhost.Queues;

/// <summary>struct virtq_desc: one entry of the descriptor table (16 bytes, little-endian).</summary>
[StructLayout(LayoutKind.Sequential, Size = 16)]
public struct VirtqDescriptor
{
    public const ushort FlagNext = 1;
    public const ushort FlagWrite = 2;
    public const ushort FlagIndirect = 4;

    public ulong Addr;
    public uint Len;
    public ushort Flags;
    public ushort Next;
}

/// <summary>struct virtq_used_elem.</summary>
[StructLayout(LayoutKind.Sequential, Size = 8)]
public struct VirtqUsedElement
{
    public uint Id;
    public uint Len;
}

/// <summary>Sizes and offsets of the split ring's three parts (virtio 1.2, 2.7).</summary>
public static class SplitRingLayout
{
    public const ushort AvailFlagNoInterrupt = 1;
    public const ushort UsedFlagNoNotify = 1;
    public const int MaxQueueSize = 32768;

    public static ulong DescriptorTableBytes(uint size) => 16UL * size;
    /// <summary>flags, idx, ring[size], used_event.</summary>
    public static ulong AvailRingBytes(uint size) => 4UL + 2UL * size + 2;
    /// <summary>flags, idx, ring[size], avail_event.</summary>
    public static ulong UsedRingBytes(uint size) => 4UL + 8UL * size + 2;

    public static bool IsValidSize(uint size) => size is > 0 and <= MaxQueueSize && (size & (size - 1)) == 0;
}
