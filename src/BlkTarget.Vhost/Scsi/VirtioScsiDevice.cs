using BlkTarget.Storage;
using BlkTarget.Vhost.Device;
using BlkTarget.Vhost.Protocol;
using Microsoft.Extensions.Logging;

namespace BlkTarget.Vhost.Scsi;

/// <summary>
/// The virtio-scsi device model: queue 0 control, queue 1 event, queues 2.. requests (QEMU's
/// vhost-user-scsi-pci uses num_queues + 2 virtqueues and checks GET_QUEUE_NUM against that). Features:
/// VERSION_1, INDIRECT_DESC, EVENT_IDX, HOTPLUG and CHANGE; no INOUT or T10_PI.
/// <para>HOTPLUG: LUNs added and removed while the guest runs are announced on the event queue (TRANSPORT_RESET
/// RESCAN / REMOVED). CHANGE: a LUN that grew is announced with PARAM_CHANGE (CAPACITY DATA HAS CHANGED). QEMU 7.2
/// passes HOTPLUG through only when the backend offers it; it sets CHANGE on its own, so CHANGE must be offered
/// for SET_FEATURES to succeed.</para>
/// </summary>
public sealed class VirtioScsiDevice : IVhostUserDevice
{
    private readonly ILogger _log;

    public VirtioScsiDevice(string name, IReadOnlyList<ScsiLunDefinition> luns, ScsiOptions options, ILogger log)
    {
        Context = new ScsiDeviceContext(name, luns, options);
        _log = log;
    }

    public ScsiDeviceContext Context { get; }
    public string Name => Context.Name;

    public ulong Features { get; } = VirtioFeatures.Bit(VirtioFeatures.Version1)
        | VirtioFeatures.Bit(VirtioFeatures.RingIndirectDesc)
        | VirtioFeatures.Bit(VirtioFeatures.RingEventIdx)
        | VirtioFeatures.Bit(VirtioFeatures.RingPacked)
        | VirtioFeatures.Bit(VirtioScsi.FeatureHotplug)
        | VirtioFeatures.Bit(VirtioScsi.FeatureChange);

    public int QueueCount => Context.Options.RequestQueues + VirtioScsi.FirstRequestQueue;

    public void ReadConfig(uint offset, Span<byte> destination) => Context.Config.Read(offset, destination);

    public bool WriteConfig(uint offset, ReadOnlySpan<byte> data) => Context.Config.Write(offset, data);

    public IRunningQueue CreateQueue(QueueStartInfo start) => start.Index switch
    {
        VirtioScsi.ControlQueue => new ScsiControlQueue(start, Context, _log),
        VirtioScsi.EventQueue => new ScsiEventQueue(start, Context.Events, Context.Name, _log),
        _ => new ScsiRequestQueue(start, Context, _log),
    };

    public void Reset() => Context.Reset();

    /// <summary>Each LUN on <paramref name="backend"/> reports CAPACITY DATA HAS CHANGED to its next command, and
    /// a PARAM_CHANGE event with that sense code goes to the driver (Linux then re-reads the capacity). False: the
    /// config space does not change.</summary>
    public bool MediumResized(IBlockDevice backend)
    {
        foreach (var lun in Context.Luns)
        {
            if (lun.Backend != backend) continue;
            lun.RaiseAttention(ScsiLun.AttentionCapacity);
            Context.Events.Post(ScsiEvent.ParameterChanged(lun.Target, lun.Lun, SenseCode.CapacityDataHasChanged));
        }
        return false;
    }

    public void Connected(int session) => Context.Connected(session);
}
