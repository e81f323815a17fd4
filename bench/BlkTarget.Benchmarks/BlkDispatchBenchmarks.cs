using System.Buffers.Binary;
using BenchmarkDotNet.Attributes;
using BlkTarget.Storage;
using BlkTarget.Storage.Ram;
using BlkTarget.Vhost.Blk;
using BlkTarget.Vhost.Device;
using BlkTarget.Vhost.Queues;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlkTarget.Benchmarks;

/// <summary>
/// One virtio-blk request end to end inside the target, as the reactor runs it: pop the head from the avail
/// ring, walk the chain, parse the header, submit to a RAM disk (which copies 4 KiB inline), write the status,
/// push and publish the used element, decide on the interrupt. <c>Batch</c> requests are offered per poll (1:
/// a QD1 guest; 32: a loaded queue). Reported per request; allocation must be 0 bytes.
/// </summary>
[MemoryDiagnoser]
public unsafe class BlkDispatchBenchmarks
{
    private const ushort Next = VirtqDescriptor.FlagNext;
    private const ushort Write = VirtqDescriptor.FlagWrite;
    private const int Requests = 32;
    private RingFixture _fixture = null!;
    private RamDisk _disk = null!;
    private IoContext _io = null!;
    private BlkQueue _queue = null!;

    [Params(1, 32)]
    public int Batch { get; set; }

    [Params(BlockOperation.Read, BlockOperation.Write)]
    public BlockOperation Operation { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _fixture = new RingFixture(256);
        _disk = new RamDisk(64UL << 20);
        _io = new IoContext();
        var context = new BlkDeviceContext("bench", _disk, new BlkOptions());
        var start = new QueueStartInfo(0, _fixture.CreateRing(eventIdx: true), _fixture.Memory, 0, -1, -1, _io);
        _queue = new BlkQueue(start, context, NullLogger.Instance);
        bool read = Operation == BlockOperation.Read;
        for (int r = 0; r < Requests; r++)
        {
            int d = r * 3;
            ulong header = _fixture.Allocate(16, 16);
            var h = new Span<byte>(_fixture.At(header), 16);
            BinaryPrimitives.WriteUInt32LittleEndian(h, read ? VirtioBlk.TypeIn : VirtioBlk.TypeOut);
            BinaryPrimitives.WriteUInt32LittleEndian(h[4..], 0);
            BinaryPrimitives.WriteUInt64LittleEndian(h[8..], (ulong)r * 8 * 997 % ((64UL << 20) / 512 - 8) & ~7UL);
            _fixture.SetDescriptor(d, header, 16, Next, (ushort)(d + 1));
            _fixture.SetDescriptor(d + 1, _fixture.Allocate(4096, 4096), 4096, (ushort)((read ? Write : 0) | Next), (ushort)(d + 2));
            _fixture.SetDescriptor(d + 2, _fixture.Allocate(1), 1, Write);
        }
        // Touch the disk so reads copy real pages, not the shared zero page.
        for (int r = 0; r < 4; r++) RunBatch(Requests);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _queue.Dispose();
        _io.Dispose();
        _disk.Dispose();
        _fixture.Dispose();
    }

    [Benchmark(OperationsPerInvoke = Requests)]
    public int Dispatch()
    {
        int done = 0;
        for (int i = 0; i < Requests; i += Batch) done += RunBatch(Batch);
        return done;
    }

    private int RunBatch(int batch)
    {
        for (int i = 0; i < batch; i++) _fixture.Offer((ushort)(i * 3));
        _fixture.Publish();
        return _queue.Poll();
    }
}
