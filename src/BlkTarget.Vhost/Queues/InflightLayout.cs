namespace BlkTarget.Vhost.Queues;

/// <summary>
/// The shared inflight-tracking area of VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD (vhost-user specification, "Inflight
/// I/O tracking"): one queue region per virtqueue, back to back, each aligned to 64 bytes. All fields little-endian.
/// <para>
/// Split-ring queue region (QueueRegionSplit): <c>u64 features; u16 version; u16 desc_num; u16 last_batch_head;
/// u16 used_idx;</c> then <c>desc_num</c> DescStateSplit entries of 16 bytes: <c>u8 inflight; u8 padding[5];
/// u16 next; u64 counter;</c>. The size per queue is <c>align64(16 + 16 * queue_size)</c> bytes, the same figure
/// QEMU's libvhost-user and DPDK's rte_vhost compute. The packed layout (QueueRegionPacked) is not implemented yet;
/// it gets its own sizes here.
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

    /// <summary>Bytes of one split-ring queue region for a queue of <paramref name="queueSize"/> descriptors
    /// (header plus one DescStateSplit per descriptor, rounded up to 64).</summary>
    public static ulong SplitQueueRegionBytes(uint queueSize) =>
        AlignUp(SplitHeaderBytes + (ulong)SplitDescStateBytes * queueSize, QueueRegionAlignment);

    /// <summary>Bytes the whole area needs for <paramref name="numQueues"/> split queues of <paramref name="queueSize"/>.</summary>
    public static ulong SplitAreaBytes(uint numQueues, uint queueSize) => numQueues * SplitQueueRegionBytes(queueSize);

    private static ulong AlignUp(ulong value, ulong alignment) => (value + alignment - 1) & ~(alignment - 1);
}
