using BlkTarget.Vhost.Blk;
using BlkTarget.Vhost.Protocol;
using BlkTarget.Vhost.Scsi;

namespace BlkTarget.Management;

/// <summary>Spec names of negotiated feature bits, for status output (virtio 1.2 feature names, vhost-user
/// protocol feature names as in QEMU's docs/interop/vhost-user.rst).</summary>
public static class FeatureNames
{
    private static readonly (int Bit, string Name)[] Transport =
    [
        (VirtioFeatures.LogAll, "LOG_ALL"), (VirtioFeatures.RingIndirectDesc, "RING_INDIRECT_DESC"), (VirtioFeatures.RingEventIdx, "RING_EVENT_IDX"),
        (VirtioFeatures.VhostUserProtocolFeatures, "PROTOCOL_FEATURES"), (VirtioFeatures.Version1, "VERSION_1"),
        (VirtioFeatures.RingPacked, "RING_PACKED"),
    ];

    private static readonly (int Bit, string Name)[] Blk =
    [
        (VirtioBlk.FeatureSizeMax, "SIZE_MAX"), (VirtioBlk.FeatureSegMax, "SEG_MAX"), (VirtioBlk.FeatureGeometry, "GEOMETRY"),
        (VirtioBlk.FeatureRo, "RO"), (VirtioBlk.FeatureBlkSize, "BLK_SIZE"), (VirtioBlk.FeatureFlush, "FLUSH"),
        (VirtioBlk.FeatureTopology, "TOPOLOGY"), (VirtioBlk.FeatureConfigWce, "CONFIG_WCE"), (VirtioBlk.FeatureMq, "MQ"),
        (VirtioBlk.FeatureDiscard, "DISCARD"), (VirtioBlk.FeatureWriteZeroes, "WRITE_ZEROES"),
    ];

    private static readonly (int Bit, string Name)[] Scsi =
    [
        (VirtioScsi.FeatureInOut, "INOUT"), (VirtioScsi.FeatureHotplug, "HOTPLUG"), (VirtioScsi.FeatureChange, "CHANGE"),
        (VirtioScsi.FeatureT10Pi, "T10_PI"),
    ];

    /// <summary>Names of the bits set in <paramref name="features"/> for a device of <paramref name="kind"/> ("blk",
    /// "scsi"); unknown bits as "bit N".</summary>
    public static IEnumerable<string> Virtio(ulong features, string kind)
    {
        var known = Transport.Concat(kind == "scsi" ? Scsi : Blk).ToDictionary(b => b.Bit, b => b.Name);
        for (int bit = 0; bit < 64; bit++)
            if ((features & (1UL << bit)) != 0) yield return known.TryGetValue(bit, out var name) ? name : $"bit {bit}";
    }

    /// <summary>Names of the vhost-user protocol features set (MQ, REPLY_ACK, BACKEND_REQ, CONFIG, ...).</summary>
    public static IEnumerable<string> Protocol(ProtocolFeatures features)
    {
        for (int bit = 0; bit < 64; bit++)
        {
            var f = (ProtocolFeatures)(1UL << bit);
            if ((features & f) == 0) continue;
            yield return Enum.IsDefined(f) ? ToUpperSnake(f.ToString()) : $"bit {bit}";
        }
    }

    private static string ToUpperSnake(string pascal) =>
        string.Concat(pascal.Select((c, i) => i > 0 && char.IsUpper(c) ? "_" + c : char.ToUpperInvariant(c).ToString()));
}
