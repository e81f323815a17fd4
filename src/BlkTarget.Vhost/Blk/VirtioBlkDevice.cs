using BlkTarget.Storage;
using BlkTarget.Vhost.Device;
using BlkTarget.Vhost.Protocol;
using Microsoft.Extensions.Logging;

namespace BlkTarget.Vhost.Blk;

/// <summary>The virtio-blk device model: offered features, config space, and queue runtimes.</summary>
public sealed class VirtioBlkDevice : IVhostUserDevice
{
    private readonly ILogger _log;

    /// <param name="gate">See <see cref="BlkDeviceContext.Gate"/>.</param>
    public VirtioBlkDevice(string name, IBlockDevice backend, BlkOptions options, ILogger log, Scsi.Atomicity.CompareAndWriteGate? gate = null)
    {
        BlkOptions.Validate(options, backend.Info);
        Context = new BlkDeviceContext(name, backend, options, gate);
        _log = log;
        Features = ComputeFeatures(backend.Info, options);
    }

    public BlkDeviceContext Context { get; }
    public string Name => Context.Name;
    public ulong Features { get; }
    public int QueueCount => Context.Options.Queues;

    public static ulong ComputeFeatures(BlockDeviceInfo info, BlkOptions options)
    {
        ulong f = VirtioFeatures.Bit(VirtioFeatures.Version1)
            | VirtioFeatures.Bit(VirtioFeatures.RingIndirectDesc)
            | VirtioFeatures.Bit(VirtioFeatures.RingEventIdx)
            | VirtioFeatures.Bit(VirtioFeatures.RingPacked)
            | VirtioFeatures.Bit(VirtioBlk.FeatureSizeMax)
            | VirtioFeatures.Bit(VirtioBlk.FeatureSegMax)
            | VirtioFeatures.Bit(VirtioBlk.FeatureBlkSize)
            | VirtioFeatures.Bit(VirtioBlk.FeatureFlush)
            | VirtioFeatures.Bit(VirtioBlk.FeatureTopology)
            | VirtioFeatures.Bit(VirtioBlk.FeatureConfigWce)
            | VirtioFeatures.Bit(VirtioBlk.FeatureMq);
        if (info.ReadOnly) f |= VirtioFeatures.Bit(VirtioBlk.FeatureRo);
        if (info.SupportsDiscard && !info.ReadOnly) f |= VirtioFeatures.Bit(VirtioBlk.FeatureDiscard);
        if (info.SupportsWriteZeroes && !info.ReadOnly) f |= VirtioFeatures.Bit(VirtioBlk.FeatureWriteZeroes);
        return f;
    }

    public void ReadConfig(uint offset, Span<byte> destination) => Context.Config.Read(offset, destination);

    public bool WriteConfig(uint offset, ReadOnlySpan<byte> data) => Context.Config.Write(offset, data);

    public IRunningQueue CreateQueue(QueueStartInfo start) => new BlkQueue(start, Context, _log);

    public void Reset() => Context.Config.Reset();

    /// <summary>The export's disk grew: the config space's capacity follows. True: the frontend must be told
    /// (VHOST_USER_BACKEND_CONFIG_CHANGE_MSG), and QEMU then re-reads the config and notifies the guest.</summary>
    public bool MediumResized(IBlockDevice backend)
    {
        if (backend != Context.Backend) return false;
        Context.Config.SetCapacity(backend.Info.SizeBytes);
        return true;
    }
}
