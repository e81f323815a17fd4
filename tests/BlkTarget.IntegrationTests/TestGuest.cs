using BlkTarget.Vhost.Frontend;

namespace BlkTarget.IntegrationTests;

/// <summary>A frontend with its guest RAM and queues: what QEMU plus a guest driver would be.</summary>
internal sealed class TestGuest : IDisposable
{
    private TestGuest(GuestMemoryArena arena, VhostUserFrontend frontend, QueueDriver[] queues)
    {
        Arena = arena;
        Frontend = frontend;
        Queues = queues;
        Blk = queues.Select(q => new BlkRequestQueue(q, arena)).ToArray();
    }

    public GuestMemoryArena Arena { get; }
    public VhostUserFrontend Frontend { get; private set; }
    public QueueDriver[] Queues { get; }
    public BlkRequestQueue[] Blk { get; }

    /// <summary>Queue <paramref name="index"/> as the split-ring driver it is unless the guest was connected packed.</summary>
    public VirtqueueDriver SplitQueue(int index) => (VirtqueueDriver)Queues[index];

    /// <summary>Connects, negotiates and (unless told not to) starts every queue; <paramref name="packed"/> drives packed
    /// rings instead of split ones.</summary>
    public static TestGuest Connect(string socketPath, int queues = 1, int queueSize = 128, VhostUserFrontendOptions? options = null,
        ulong arenaBytes = 8 << 20, int regions = 1, int maxIndirect = 64, bool start = true, bool packed = false)
    {
        var arena = new GuestMemoryArena(arenaBytes, regions);
        VhostUserFrontend? frontend = null;
        var drivers = new List<QueueDriver>();
        try
        {
            frontend = VhostUserFrontend.Connect(socketPath, options);
            for (int i = 0; i < queues; i++)
                drivers.Add(packed ? new PackedVirtqueueDriver(arena, i, queueSize, maxIndirect) : new VirtqueueDriver(arena, i, queueSize, maxIndirect));
            var guest = new TestGuest(arena, frontend, drivers.ToArray());
            if (start) guest.Start();
            return guest;
        }
        catch
        {
            foreach (var d in drivers) d.Dispose();
            frontend?.Dispose();
            arena.Dispose();
            throw;
        }
    }

    public void Start(bool enable = true) => Frontend.Start(Arena, Queues, enable);

    public uint[] Stop() => Frontend.Stop(Queues);

    /// <summary>
    /// What QEMU 7.2's vhost-user-blk does when its backend went away and one listens on the socket again: the old
    /// connection is dropped, the inflight area kept; a new connection negotiates, sends SET_INFLIGHT_FD with the kept
    /// area and starts every split ring from used->idx, every packed ring from the base of its last start (it could not
    /// ask GET_VRING_BASE).
    /// </summary>
    public void Reconnect(string socketPath, TimeSpan connectTimeout)
    {
        var area = Frontend.TakeInflight();
        Frontend.Dispose();
        Frontend = VhostUserFrontend.Connect(socketPath, Frontend.Options, connectTimeout);
        Frontend.Inflight = area;
        foreach (var q in Queues) q.RestoreBaseAfterBackendLoss();
        Start();
    }

    /// <summary>What a guest driver does after a device reset: fresh, empty rings.</summary>
    public void ResetQueues()
    {
        foreach (var q in Queues) q.Reset();
        foreach (var b in Blk) b.ResetSlots();
        Frontend.ResetInflight();
    }

    public GuestBuffer Allocate(uint bytes, uint alignment = 512) => Arena.Allocate(bytes, alignment);

    public void Dispose()
    {
        Frontend.Dispose();
        foreach (var q in Queues) q.Dispose();
        Arena.Dispose();
    }
}
