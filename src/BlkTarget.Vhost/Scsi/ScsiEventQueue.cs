using BlkTarget.Vhost.Device;
using BlkTarget.Vhost.Queues;

namespace BlkTarget.Vhost.Scsi;

/// <summary>
/// The virtio-scsi event queue. We report no events (no hotplug, no parameter changes, no asynchronous
/// notifications), so the driver's event buffers simply stay posted: nothing is ever taken from the ring, the
/// avail index we report on stop is where we started, and there is nothing to drain. No kick fd is watched.
/// </summary>
public sealed class ScsiEventQueue(QueueStartInfo start, string deviceName) : IRunningQueue
{
    private readonly IVirtqueue _ring = start.Ring;

    public string DeviceName => deviceName;
    public int Index => start.Index;
    public int KickFd => -1;
    public ushort LastAvailIdx => _ring.LastAvailIdx;
    public string? BrokenReason => null;
    public bool Faulted => false;
    public int BackendInFlight => 0;

    public int Poll() => 0;
    public bool PrepareToSleep() => false;
    public void WokeUp() { }
    public void Fault(Exception error) { }
    public void SetCallFd(int fd) { }
    public void BeginStop(Action onDrained) => onDrained();
    public void AbandonInFlight() { }
    public void Dispose() { }
}
