using BlkTarget.Vhost.Device;
using BlkTarget.Storage.Interop;
using BlkTarget.Vhost.Queues;

namespace BlkTarget.Vhost.Protocol;

/// <summary>
/// What the frontend has told us about one virtqueue (size, base, addresses, eventfds, enable state), kept by
/// the session across starts and stops. The session owns the eventfds; a running queue only borrows them.
/// </summary>
internal sealed class VringSetup : IDisposable
{
    public uint Num = 0;
    /// <summary>SET_VRING_BASE's value: split rings the avail index (16 bits), packed rings both positions with their
    /// wrap counters (<see cref="PackedRingLayout.EncodeBase"/>).</summary>
    public uint Base;
    public VringAddress? Address;
    public OwnedFd? Kick;
    public OwnedFd? Call;
    public OwnedFd? Err;
    /// <summary>SET_VRING_KICK arrived (with an fd or the no-fd bit): the ring is started.</summary>
    public bool Started;
    /// <summary>SET_VRING_ENABLE state; only consulted when protocol features were negotiated.</summary>
    public bool Enabled;
    public IRunningQueue? Running;
    public Reactor.Reactor? Reactor;
    /// <summary>The running queue's ring (for switching the log of its own writes on the reactor).</summary>
    public IVirtqueue? Ring;

    public int KickFd => Kick?.Fd ?? -1;
    public int CallFd => Call?.Fd ?? -1;

    public static void Replace(ref OwnedFd? slot, OwnedFd? value)
    {
        slot?.Dispose();
        slot = value;
    }

    /// <summary>Forgets everything the frontend set up (device reset); the queue must not be running.</summary>
    public void Clear()
    {
        Num = 0;
        Base = 0;
        Address = null;
        Started = false;
        Enabled = false;
        Replace(ref Kick, null);
        Replace(ref Call, null);
        Replace(ref Err, null);
    }

    public void Dispose() => Clear();
}
