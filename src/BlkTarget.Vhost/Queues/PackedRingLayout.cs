using System.Runtime.InteropServices;

namespace BlkTarget.Vhost.Queues;

/// <summary>struct pvirtq_desc (virtio 1.2, 2.8.13): one entry of a packed ring's descriptor ring or of an indirect
/// table, 16 bytes, little-endian. The device writes used descriptors in the same slots (id, len, then flags).</summary>
[StructLayout(LayoutKind.Sequential, Size = 16)]
public struct PackedDescriptor
{
    public ulong Addr;
    public uint Len;
    /// <summary>Buffer ID: read from the last descriptor of a chain; the device returns it in the used descriptor.</summary>
    public ushort Id;
    public ushort Flags;
}

/// <summary>
/// Constants and sizes of the packed virtqueue (virtio 1.2, 2.8): descriptor flags including the AVAIL/USED wrap
/// bits, the event suppression structure (struct pvirtq_event_suppress: <c>le16 desc_event_off_wrap; le16
/// desc_event_flags</c>, 4 bytes) and the 32-bit vring base of SET/GET_VRING_BASE.
/// </summary>
public static class PackedRingLayout
{
    public const ushort FlagNext = 1;
    public const ushort FlagWrite = 2;
    public const ushort FlagIndirect = 4;
    /// <summary>VIRTQ_DESC_F_AVAIL (bit 7).</summary>
    public const ushort FlagAvail = 1 << 7;
    /// <summary>VIRTQ_DESC_F_USED (bit 15).</summary>
    public const ushort FlagUsed = 1 << 15;

    /// <summary>RING_EVENT_FLAGS_ENABLE: notify on every buffer.</summary>
    public const ushort EventFlagsEnable = 0;
    /// <summary>RING_EVENT_FLAGS_DISABLE: do not notify.</summary>
    public const ushort EventFlagsDisable = 1;
    /// <summary>RING_EVENT_FLAGS_DESC: notify when the descriptor at desc_event_off_wrap is reached (EVENT_IDX only).</summary>
    public const ushort EventFlagsDesc = 2;
    /// <summary>Bytes of one event suppression structure (off_wrap at 0, flags at 2).</summary>
    public const int EventSuppressionBytes = 4;

    /// <summary>Bit 15 of a 16-bit position carries its wrap counter; bits 0-14 the ring index.</summary>
    public const ushort WrapBit = 1 << 15;

    public static ulong DescriptorRingBytes(uint size) => 16UL * size;

    /// <summary>Flags the device writes into a used descriptor in the pass with wrap counter
    /// <paramref name="usedWrap"/>: AVAIL and USED both equal to it.</summary>
    public static ushort UsedFlags(bool usedWrap) => usedWrap ? (ushort)(FlagAvail | FlagUsed) : (ushort)0;

    /// <summary>True when <paramref name="flags"/> mark a descriptor the driver made available in the pass with wrap
    /// counter <paramref name="wrap"/>: AVAIL == wrap and USED != wrap.</summary>
    public static bool IsAvailable(ushort flags, bool wrap) =>
        ((flags & FlagAvail) != 0) == wrap && ((flags & FlagUsed) != 0) != wrap;

    /// <summary>A position (ring index 0..32767 plus wrap counter) as carried in bits 0-14 and bit 15 of a u16.</summary>
    public static ushort EncodePosition(ushort index, bool wrap) => (ushort)((index & 0x7fff) | (wrap ? WrapBit : 0));

    public static (ushort Index, bool Wrap) DecodePosition(ushort value) => ((ushort)(value & 0x7fff), (value & WrapBit) != 0);

    /// <summary>
    /// The SET_VRING_BASE / GET_VRING_BASE value of a packed ring (QEMU hw/virtio/virtio.c, packed last_avail_idx):
    /// bits 0-14 last_avail_idx, bit 15 the avail wrap counter, bits 16-30 the used index, bit 31 the used wrap counter.
    /// </summary>
    public static uint EncodeBase(ushort availIdx, bool availWrap, ushort usedIdx, bool usedWrap) =>
        EncodePosition(availIdx, availWrap) | (uint)EncodePosition(usedIdx, usedWrap) << 16;

    /// <summary>Splits a packed vring base into its avail and used positions (see <see cref="EncodeBase"/>).</summary>
    public static (ushort AvailIdx, bool AvailWrap, ushort UsedIdx, bool UsedWrap) DecodeBase(uint value)
    {
        var (a, aw) = DecodePosition((ushort)value);
        var (u, uw) = DecodePosition((ushort)(value >> 16));
        return (a, aw, u, uw);
    }

    /// <summary>Packed rings may have any size from 1 to 32768 (virtio 1.2, 2.8.10.1); this backend also takes
    /// powers of two only, like its split rings, so one queue size check serves both.</summary>
    public static bool IsValidSize(uint size) => SplitRingLayout.IsValidSize(size);
}
