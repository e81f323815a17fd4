namespace BlkTarget.Vhost.Queues;

/// <summary>
/// The shared inflight-tracking area of VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD (vhost-user specification, "Inflight
/// I/O tracking"): one queue region per virtqueue, back to back, each aligned to 64 bytes. All fields little-endian.
/// <para>
/// Split-ring queue region (QueueRegionSplit): <c>u64 features; u16 version; u16 desc_num; u16 last_batch_head;
/// u16 used_idx;</c> then <c>desc_num</c> DescStateSplit entries of 16 bytes: <c>u8 inflight; u8 padding[5];
/// u16 next; u64 counter;</c>: <c>align64(16 + 16 * queue_size)</c> bytes.
/// </para>
/// <para>
/// Packed-ring queue region (QueueRegionPacked): <c>u64 features; u16 version; u16 desc_num; u16 free_head;
/// u16 old_free_head; u16 used_idx; u16 old_used_idx; u8 used_wrap_counter; u8 old_used_wrap_counter; u8 padding[7];</c>
/// (29 bytes, padded to 32 by the u64 alignment of the entries) then <c>desc_num</c> DescStatePacked entries of 32
/// bytes: <c>u8 inflight; u8 padding; u16 next; u16 last; u16 num; u64 counter; u16 id; u16 flags; u32 len;
/// u64 addr;</c>: <c>align64(32 + 32 * queue_size)</c> bytes.
/// </para>
/// <para>
/// GET_INFLIGHT_FD may arrive before the ring layout is known (the spec does not order it after SET_FEATURES; QEMU
/// 7.2's vhost-user-blk happens to send SET_FEATURES first), so every area this backend creates gives each queue
/// <see cref="QueueRegionBytes"/>, the larger of the two, and a queue uses the start of its slot in whichever layout
/// its ring has. An area someone sized for split queues only still serves split rings.
/// </para>
/// </summary>
public static class InflightLayout
{
    /// <summary>Every queue region starts on this boundary (bytes).</summary>
    public const ulong QueueRegionAlignment = 64;
    /// <summary>The only layout version defined; 0 means "never initialised".</summary>
    public const ushort Version = 1;

    // QueueRegionSplit header, byte offsets.
    public const int FeaturesOffset = 0;
    public const int VersionOffset = 8;
    public const int DescNumOffset = 10;
    public const int LastBatchHeadOffset = 12;
    public const int UsedIdxOffset = 14;
    public const int SplitHeaderBytes = 16;

    // DescStateSplit, byte offsets inside one entry.
    public const int DescInflightOffset = 0;
    public const int DescNextOffset = 6;
    public const int DescCounterOffset = 8;
    public const int SplitDescStateBytes = 16;

    // QueueRegionPacked header, byte offsets (features, version, desc_num as above).
    public const int FreeHeadOffset = 12;
    public const int OldFreeHeadOffset = 14;
    public const int PackedUsedIdxOffset = 16;
    public const int OldUsedIdxOffset = 18;
    public const int UsedWrapCounterOffset = 20;
    public const int OldUsedWrapCounterOffset = 21;
    public const int PackedHeaderBytes = 32;

    // DescStatePacked, byte offsets inside one entry (inflight at 0 as in DescStateSplit).
    public const int PackedNextOffset = 2;
    public const int PackedLastOffset = 4;
    public const int PackedNumOffset = 6;
    public const int PackedCounterOffset = 8;
    public const int PackedIdOffset = 16;
    public const int PackedFlagsOffset = 18;
    public const int PackedLenOffset = 20;
    public const int PackedAddrOffset = 24;
    public const int PackedDescStateBytes = 32;

    /// <summary>Bytes of one packed-ring queue region for a queue of <paramref name="queueSize"/> descriptors (header
    /// plus one DescStatePacked per descriptor, rounded up to 64).</summary>
    public static ulong PackedQueueRegionBytes(uint queueSize) =>
        AlignUp(PackedHeaderBytes + (ulong)PackedDescStateBytes * queueSize, QueueRegionAlignment);

    /// <summary>Bytes this backend gives each queue in an area it creates: room for either layout.</summary>
    public static ulong QueueRegionBytes(uint queueSize) => Math.Max(SplitQueueRegionBytes(queueSize), PackedQueueRegionBytes(queueSize));

    /// <summary>Bytes of an area this backend creates for <paramref name="numQueues"/> queues of <paramref name="queueSize"/>.</summary>
    public static ulong AreaBytes(uint numQueues, uint queueSize) => numQueues * QueueRegionBytes(queueSize);

    /// <summary>Bytes of one split-ring queue region for a queue of <paramref name="queueSize"/> descriptors
    /// (header plus one DescStateSplit per descriptor, rounded up to 64).</summary>
    public static ulong SplitQueueRegionBytes(uint queueSize) =>
        AlignUp(SplitHeaderBytes + (ulong)SplitDescStateBytes * queueSize, QueueRegionAlignment);

    /// <summary>Bytes the whole area needs for <paramref name="numQueues"/> split queues of <paramref name="queueSize"/>.</summary>
    public static ulong SplitAreaBytes(uint numQueues, uint queueSize) => numQueues * SplitQueueRegionBytes(queueSize);

    private static ulong AlignUp(ulong value, ulong alignment) => (value + alignment - 1) & ~(alignment - 1);
}
