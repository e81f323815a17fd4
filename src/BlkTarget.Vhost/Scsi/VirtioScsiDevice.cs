using BlkTarget.Vhost.Device;
using BlkTarget.Vhost.Protocol;
using Microsoft.Extensions.Logging;

namespace BlkTarget.Vhost.Scsi;

/// <summary>
/// The virtio-scsi device model: queue 0 control, queue 1 event, queues 2.. requests (QEMU's
/// vhost-user-scsi-pci uses num_queues + 2 virtqueues and checks GET_QUEUE_NUM against that). Features:
/// VERSION_1, INDIRECT_DESC, EVENT_IDX and CHANGE; no INOUT, HOTPLUG or T10_PI.
/// <para>CHANGE only allows the device to send PARAM_CHANGE events; a LUN's parameters never change while it
/// is served (fixed capacity; WCE changes come from the guest's own MODE SELECT), so none is ever due. QEMU 7.2
/// acks CHANGE on its own (virtio-scsi always sets it), so it must be offered for SET_FEATURES to succeed.</para>
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
        | VirtioFeatures.Bit(VirtioScsi.FeatureChange);

    public int QueueCount => Context.Options.RequestQueues + VirtioScsi.FirstRequestQueue;

    public void ReadConfig(uint offset, Span<byte> destination) => Context.Config.Read(offset, destination);

    public bool WriteConfig(uint offset, ReadOnlySpan<byte> data) => Context.Config.Write(offset, data);

    public IRunningQueue CreateQueue(QueueStartInfo start) => start.Index switch
    {
        VirtioScsi.ControlQueue => new ScsiControlQueue(start, Context, _log),
        VirtioScsi.EventQueue => new ScsiEventQueue(start, Context.Name),
        _ => new ScsiRequestQueue(start, Context, _log),
    };

    public void Reset() => Context.Reset();

    public void Connected(int session) => Context.Connected(session);
}
