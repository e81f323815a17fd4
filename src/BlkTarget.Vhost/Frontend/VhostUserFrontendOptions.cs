using BlkTarget.Vhost.Blk;
using BlkTarget.Vhost.Protocol;

namespace BlkTarget.Vhost.Frontend;

/// <summary>What a <see cref="VhostUserFrontend"/> asks for when it negotiates with a backend.</summary>
public sealed record VhostUserFrontendOptions
{
    /// <summary>Ack VIRTIO_F_RING_EVENT_IDX when offered.</summary>
    public bool EventIdx { get; init; } = true;

    /// <summary>Ack VIRTIO_F_RING_INDIRECT_DESC when offered.</summary>
    public bool IndirectDescriptors { get; init; } = true;

    /// <summary>Protocol features acked when offered; the frontend handles exactly these.</summary>
    public ProtocolFeatures ProtocolFeatures { get; init; } = SupportedProtocolFeatures;

    /// <summary>Feature bits never acked even when both sides support them (for tests and comparisons).</summary>
    public ulong DisabledFeatures { get; init; }

    /// <summary>Map memory with ADD_MEM_REG per region instead of SET_MEM_TABLE when CONFIGURE_MEM_SLOTS was
    /// negotiated (what QEMU does then).</summary>
    public bool UseAddMemReg { get; init; }

    /// <summary>Bytes asked for with GET_CONFIG during the handshake (QEMU 7.2: sizeof(struct virtio_blk_config)).</summary>
    public uint ConfigSize { get; init; } = VirtioBlkConfig.Length;

    /// <summary>How long to wait for a reply before giving up with <see cref="TimeoutException"/>.</summary>
    public TimeSpan ReplyTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Protocol features this frontend can use.</summary>
    public const ProtocolFeatures SupportedProtocolFeatures =
        ProtocolFeatures.Mq | ProtocolFeatures.ReplyAck | ProtocolFeatures.Config | ProtocolFeatures.ConfigureMemSlots
        | ProtocolFeatures.BackendReq | ProtocolFeatures.InflightShmfd | ProtocolFeatures.LogShmfd;

    /// <summary>virtio-blk feature bits this frontend understands (the ones QEMU 7.2 forwards).</summary>
    public const ulong BlkFeatures =
        (1UL << VirtioBlk.FeatureSizeMax) | (1UL << VirtioBlk.FeatureSegMax) | (1UL << VirtioBlk.FeatureGeometry) |
        (1UL << VirtioBlk.FeatureRo) | (1UL << VirtioBlk.FeatureBlkSize) | (1UL << VirtioBlk.FeatureFlush) |
        (1UL << VirtioBlk.FeatureTopology) | (1UL << VirtioBlk.FeatureConfigWce) | (1UL << VirtioBlk.FeatureMq) |
        (1UL << VirtioBlk.FeatureDiscard) | (1UL << VirtioBlk.FeatureWriteZeroes);

    /// <summary>Every feature bit this frontend would ack under these options.</summary>
    public ulong SupportedFeatures
    {
        get
        {
            ulong f = BlkFeatures | VirtioFeatures.Bit(VirtioFeatures.Version1) | VirtioFeatures.Bit(VirtioFeatures.VhostUserProtocolFeatures);
            if (EventIdx) f |= VirtioFeatures.Bit(VirtioFeatures.RingEventIdx);
            if (IndirectDescriptors) f |= VirtioFeatures.Bit(VirtioFeatures.RingIndirectDesc);
            return f & ~DisabledFeatures;
        }
    }
}
