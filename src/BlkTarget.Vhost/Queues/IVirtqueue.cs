using BlkTarget.Vhost.Memory;

namespace BlkTarget.Vhost.Queues;

/// <summary>Outcome of taking the next request from a virtqueue.</summary>
public enum PopStatus
{
    Empty,
    Popped,
    /// <summary>The ring itself is corrupt (index ran ahead, head out of range, chain refused): stop the queue.</summary>
    Corrupt,
}

/// <summary>
/// The device side of a virtqueue as device models see it: take a request (a walked descriptor chain), return
/// it with a length, publish, decide on interrupts, switch guest notifications. The split ring implements it
/// (<see cref="SplitRing"/>) and the packed ring (<see cref="PackedRing"/>) implement it, each with its inflight tracking.
/// </summary>
public interface IVirtqueue
{
    uint Size { get; }

    /// <summary>The next avail position (split: avail ring index; packed: ring index in bits 0-14, avail wrap counter in
    /// bit 15).</summary>
    ushort LastAvailIdx { get; }

    /// <summary>The position to resume from after a stop, as GET_VRING_BASE reports it: split rings the 16-bit
    /// last_avail_idx, packed rings <see cref="PackedRingLayout.EncodeBase"/> (avail and used positions).</summary>
    uint VringBase { get; }

    /// <summary>Takes the next available request and walks its chain into <paramref name="chain"/>.
    /// <paramref name="id"/> names the request when it is returned; <paramref name="error"/> says why a chain
    /// was refused (then the result is Corrupt).</summary>
    PopStatus TryPopChain(GuestMemory memory, ref ChainBuffers chain, out ushort id, out string? error);

    /// <summary>Returns request <paramref name="id"/> with <paramref name="writtenLength"/> bytes written into
    /// its device-writable buffers; visible to the guest after <see cref="PublishUsed"/>.</summary>
    void PushUsed(ushort id, uint writtenLength);

    void PublishUsed();

    /// <summary>True when the guest made requests available that were not taken yet.</summary>
    bool HasPending { get; }

    /// <summary>A hint, once requests are known to be pending: asks the cache for what taking the next one reads
    /// first, its avail entry and, on the guess that the driver reused chain <paramref name="predictedId"/> (any
    /// value: it is masked into the table), that chain's first descriptor. Reads nothing, changes nothing.</summary>
    void PrefetchNext(ushort predictedId);

    /// <summary>True when the guest wants an interrupt for what was published since the last check.</summary>
    bool ShouldSignal();

    /// <summary>Re-enables guest kicks; true if requests arrived meanwhile (do not sleep).</summary>
    bool EnableNotifications();

    void DisableNotifications();
}
