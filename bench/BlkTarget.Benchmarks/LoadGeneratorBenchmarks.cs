using BenchmarkDotNet.Attributes;
using BlkTarget.Vhost.Frontend;
using BlkTarget.Vhost.Queues;

namespace BlkTarget.Benchmarks;

/// <summary>
/// The load generator's own cost per request (what `blktarget bench` spends on the driver side): build the
/// virtio-blk chain, put it in the avail ring, publish (and decide on the kick), reap the used element. The
/// "device" is simulated inline and as cheaply as possible (copy heads from avail to used, publish), so the
/// figure is an upper bound of the driver cost; 1e9 / (ns per request) is the ceiling of one driver thread.
/// </summary>
[MemoryDiagnoser]
public unsafe class LoadGeneratorBenchmarks
{
    private GuestMemoryArena _arena = null!;
    private VirtqueueDriver _driver = null!;
    private BlkRequestQueue _queue = null!;
    private GuestBuffer[] _data = null!;
    private ushort _deviceAvail;
    private ushort _deviceUsed;

    [Params(1, 32)]
    public int Depth { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _arena = new GuestMemoryArena(8 << 20);
        _driver = new VirtqueueDriver(_arena, 0, 128) { EventIdx = true };
        _queue = new BlkRequestQueue(_driver, _arena);
        _data = [_arena.Allocate(4096, 4096)];
        _driver.DisableInterrupts();
        // Leave avail_event far behind, as a polling device does: no kicks.
        *(ushort*)(_driver.UsedRing.Pointer + 4 + 8 * 128) = 0x8000;
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _driver.Dispose();
        _arena.Dispose();
    }

    [Benchmark(OperationsPerInvoke = 32)]
    public int SubmitAndReap()
    {
        int done = 0;
        for (int round = 0; round < 32 / Depth; round++)
        {
            for (int i = 0; i < Depth; i++) _queue.TrySubmit(BlkRequestType.In, (ulong)i * 8, _data, (ulong)i);
            _queue.Kick();
            CompleteAll();
            while (_queue.TryComplete(out _)) done++;
        }
        return done;
    }

    /// <summary>The simulated device: every published head goes straight to the used ring.</summary>
    private void CompleteAll()
    {
        ushort* availIdx = (ushort*)(_driver.AvailRing.Pointer + 2);
        ushort* availRing = (ushort*)(_driver.AvailRing.Pointer + 4);
        ushort* usedIdx = (ushort*)(_driver.UsedRing.Pointer + 2);
        var usedRing = (VirtqUsedElement*)(_driver.UsedRing.Pointer + 4);
        ushort end = Volatile.Read(ref *availIdx);
        while (_deviceAvail != end)
        {
            ushort head = availRing[_deviceAvail++ & 127];
            usedRing[_deviceUsed++ & 127] = new VirtqUsedElement { Id = head, Len = 4097 };
        }
        Volatile.Write(ref *usedIdx, _deviceUsed);
    }
}
