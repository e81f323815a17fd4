using BlkTarget.Vhost.Memory;
using BlkTarget.Vhost.Queues;

namespace BlkTarget.Vhost.Tests;

/// <summary>A ring that does what the wrapped one does and remembers the ids passed to
/// <see cref="IVirtqueue.PrefetchNext"/> (hints leave no other trace).</summary>
internal sealed class HintRecordingRing(IVirtqueue inner) : IVirtqueue
{
    public List<ushort> PrefetchedIds { get; } = [];

    public uint Size => inner.Size;
    public ushort LastAvailIdx => inner.LastAvailIdx;
    public uint VringBase => inner.VringBase;
    public bool HasPending => inner.HasPending;

    public PopStatus TryPopChain(GuestMemory memory, ref ChainBuffers chain, out ushort id, out string? error) =>
        inner.TryPopChain(memory, ref chain, out id, out error);

    public void PushUsed(ushort id, uint writtenLength) => inner.PushUsed(id, writtenLength);
    public void PublishUsed() => inner.PublishUsed();

    public void PrefetchNext(ushort predictedId)
    {
        PrefetchedIds.Add(predictedId);
        inner.PrefetchNext(predictedId);
    }

    public bool ShouldSignal() => inner.ShouldSignal();
    public bool EnableNotifications() => inner.EnableNotifications();
    public void DisableNotifications() => inner.DisableNotifications();
}
