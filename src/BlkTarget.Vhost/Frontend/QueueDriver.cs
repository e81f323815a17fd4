using BlkTarget.Storage.Interop;
using BlkTarget.Vhost.Protocol;
using BlkTarget.Vhost.Queues;

namespace BlkTarget.Vhost.Frontend;

/// <summary>
/// The driver (guest) side of one virtqueue, whatever its ring layout: what request queues, the frontend and the load
/// generator use. <see cref="VirtqueueDriver"/> drives split rings (virtio 1.2, 2.7), <see cref="PackedVirtqueueDriver"/>
/// packed rings (2.8). This base owns the kick and call eventfds and waits for interrupts; one thread drives one queue,
/// nothing locks or allocates after construction.
/// </summary>
public abstract class QueueDriver : IDisposable
{
    private readonly OwnedFd _kick;
    private readonly OwnedFd _call;
    private readonly OwnedFd _epoll;

    /// <param name="index">The queue's index on the device (0..255).</param>
    /// <param name="size">Queue size: a power of two up to 32768.</param>
    /// <param name="maxIndirectDescriptors">Entries of the indirect table preallocated per chain; 0 disables indirect chains.</param>
    protected QueueDriver(int index, int size, int maxIndirectDescriptors)
    {
        if (!SplitRingLayout.IsValidSize((uint)size)) throw new ArgumentException($"queue size {size} is not a power of two up to {SplitRingLayout.MaxQueueSize}", nameof(size));
        if (index is < 0 or > 255) throw new ArgumentOutOfRangeException(nameof(index));
        if (maxIndirectDescriptors is < 0 or > DescriptorChainWalker.MaxIndirectEntries) throw new ArgumentOutOfRangeException(nameof(maxIndirectDescriptors));
        Index = index;
        Size = size;
        MaxIndirectDescriptors = maxIndirectDescriptors;
        _kick = EventFd.Create();
        _call = EventFd.Create();
        _epoll = Epoll.Create();
        Epoll.Add(_epoll, _call.Fd, 0);
    }

    public int Index { get; }
    public int Size { get; }
    public int MaxIndirectDescriptors { get; }
    /// <summary>True for a packed ring: the frontend then acks VIRTIO_F_RING_PACKED.</summary>
    public abstract bool Packed { get; }

    /// <summary>Whether VIRTIO_F_RING_EVENT_IDX was negotiated; the frontend sets it when it starts the queue.</summary>
    public bool EventIdx { get; set; }

    /// <summary>The value to send with SET_VRING_BASE at the next start: the fresh ring's after <see cref="Reset"/>, the
    /// device's GET_VRING_BASE answer after a stop (split: avail index; packed: <see cref="PackedRingLayout.EncodeBase"/>).</summary>
    public uint NextBase { get; set; }

    /// <summary>SET_VRING_ADDR payload: the ring parts' frontend-virtual addresses.</summary>
    public abstract VringAddress Address { get; }
    public int KickFd => _kick.Fd;
    public int CallFd => _call.Fd;

    /// <summary>Descriptors free for new chains.</summary>
    public abstract int FreeDescriptors { get; }
    /// <summary>Chains added and not yet reaped.</summary>
    public abstract int InFlight { get; }

    /// <summary>Zeroes the rings and forgets every chain (guest driver probe after a reset); only while the device is
    /// not running the queue.</summary>
    public abstract void Reset();

    /// <summary>What QEMU 7.2 sends as the base after losing its backend (it cannot ask GET_VRING_BASE): split rings
    /// restart at used->idx; for packed rings it keeps the base of the last start.</summary>
    public abstract void RestoreBaseAfterBackendLoss();

    /// <summary>
    /// Adds a chain of <paramref name="buffers"/> (device-readable ones first), unpublished until <see cref="KickIfNeeded"/>.
    /// With <paramref name="indirect"/> the buffers go into the chain's indirect table and the chain costs one
    /// descriptor. False when not enough descriptors are free. <paramref name="head"/> names the chain (split: head
    /// descriptor; packed: buffer ID).
    /// </summary>
    public abstract bool TryAdd(ReadOnlySpan<VirtqBuffer> buffers, ulong token, bool indirect, out ushort head);

    public bool TryAdd(ReadOnlySpan<VirtqBuffer> buffers, ulong token, bool indirect = false) => TryAdd(buffers, token, indirect, out _);

    /// <summary>Makes every added chain visible to the device (release stores).</summary>
    public abstract void PublishAvail();

    /// <summary>Publishes the added chains and kicks the device if it asked to be told; returns whether it kicked.</summary>
    public abstract bool KickIfNeeded();

    /// <summary>Publishes and kicks unconditionally.</summary>
    public void Kick()
    {
        PublishAvail();
        OnKicked();
        EventFd.Signal(_kick.Fd);
    }

    /// <summary>Records that the device was told about everything published so far.</summary>
    protected abstract void OnKicked();

    protected void SignalKick() => EventFd.Signal(_kick.Fd);

    /// <summary>Whether the device returned chains the driver has not reaped (acquire read).</summary>
    public abstract bool HasUsed { get; }

    /// <summary>Reaps one returned chain: the token given when it was added and the length the device reports
    /// writing. Throws <see cref="VirtqueueDeviceException"/> for a device that returns something not in flight.</summary>
    public abstract bool TryGetUsed(out ulong token, out uint length, out ushort head);

    public bool TryGetUsed(out ulong token, out uint length) => TryGetUsed(out token, out length, out _);

    /// <summary>Asks the device not to signal the call eventfd (for polling drivers).</summary>
    public abstract void DisableInterrupts();

    /// <summary>Asks the device to signal again. True when chains are already waiting (checked after a full fence).</summary>
    public abstract bool EnableInterrupts();

    /// <summary>
    /// Waits until the device has returned a chain, sleeping on the call eventfd (interrupts are enabled for the
    /// wait). False on timeout. A negative timeout waits forever.
    /// </summary>
    public bool WaitForUsed(int timeoutMs)
    {
        if (HasUsed) return true;
        long deadline = timeoutMs < 0 ? long.MaxValue : Environment.TickCount64 + timeoutMs;
        Span<Epoll.Event> events = stackalloc Epoll.Event[1];
        while (true)
        {
            if (EnableInterrupts()) return true;
            long now = Environment.TickCount64;
            if (now >= deadline) return false;
            int wait = timeoutMs < 0 ? -1 : (int)Math.Min(deadline - now, int.MaxValue);
            if (Epoll.Wait(_epoll, events, wait) > 0) EventFd.Drain(_call.Fd);
            if (HasUsed) return true;
        }
    }

    public bool WaitForUsed(TimeSpan timeout) => WaitForUsed((int)Math.Min(timeout.TotalMilliseconds, int.MaxValue));

    /// <summary>Reads and resets the call eventfd; returns how many signals arrived since the last read.</summary>
    public ulong DrainCalls() => EventFd.Drain(_call.Fd);

    public void Dispose()
    {
        _epoll.Dispose();
        _kick.Dispose();
        _call.Dispose();
        GC.SuppressFinalize(this);
    }
}
