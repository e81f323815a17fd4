using BlkTarget.Vhost.Device;
using BlkTarget.Vhost.Protocol;

namespace BlkTarget.Management;

/// <summary>An export being served: its spec, device model and the socket server frontends connect to.</summary>
public sealed class ManagedExport(ExportSpec spec, IVhostUserDevice device, VhostUserServer server, int reactorOffset, Vhost.Qos.QosLimiter qos)
{
    /// <summary>Replaced (under the model's lock) when LUNs are hot-plugged.</summary>
    public ExportSpec Spec { get; set; } = spec;
    public IVhostUserDevice Device { get; } = device;
    public VhostUserServer Server { get; } = server;
    /// <summary>Where this export's queues start in the reactor round-robin.</summary>
    public int ReactorOffset { get; } = reactorOffset;
    /// <summary>The export's QoS limits as its queues apply them.</summary>
    public Vhost.Qos.QosLimiter Qos { get; } = qos;
}
