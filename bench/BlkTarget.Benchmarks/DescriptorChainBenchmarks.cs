using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using BlkTarget.Storage;
using BlkTarget.Vhost.Queues;

namespace BlkTarget.Benchmarks;

/// <summary>
/// Walking one descriptor chain into iovecs (copy each descriptor, validate, translate, split at region ends):
/// a 4 KiB request as three direct descriptors, and a 128 KiB request as an indirect table of 34 entries
/// (header, 32 pages, status), which is how a Linux guest sends large requests.
/// </summary>
[MemoryDiagnoser]
public unsafe class DescriptorChainBenchmarks
{
    private const ushort Next = VirtqDescriptor.FlagNext;
    private const ushort Write = VirtqDescriptor.FlagWrite;
    private RingFixture _fixture = null!;
    private IoVec* _segments;
    private ushort _indirectHead;

    [GlobalSetup]
    public void Setup()
    {
        _fixture = new RingFixture(256);
        _segments = (IoVec*)NativeMemory.AlignedAlloc(256 * (nuint)sizeof(IoVec), 64);
        // Direct: header, 4 KiB data, status at descriptors 0-2.
        _fixture.SetDescriptor(0, _fixture.Allocate(16), 16, Next, 1);
        _fixture.SetDescriptor(1, _fixture.Allocate(4096, 4096), 4096, Write | Next, 2);
        _fixture.SetDescriptor(2, _fixture.Allocate(1), 1, Write);
        // Indirect: one descriptor pointing at a table of 34.
        ulong table = _fixture.Allocate(34 * 16, 16);
        var entries = (VirtqDescriptor*)_fixture.At(table);
        entries[0] = new VirtqDescriptor { Addr = _fixture.Allocate(16), Len = 16, Flags = Next, Next = 1 };
        for (int i = 1; i <= 32; i++)
            entries[i] = new VirtqDescriptor { Addr = _fixture.Allocate(4096, 4096), Len = 4096, Flags = Write | Next, Next = (ushort)(i + 1) };
        entries[33] = new VirtqDescriptor { Addr = _fixture.Allocate(1), Len = 1, Flags = Write };
        _indirectHead = 3;
        _fixture.SetDescriptor(_indirectHead, table, 34 * 16, VirtqDescriptor.FlagIndirect);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        NativeMemory.AlignedFree(_segments);
        _fixture.Dispose();
    }

    [Benchmark(Baseline = true)]
    public int Direct4k()
    {
        var chain = new ChainBuffers(_segments, 256);
        var error = DescriptorChainWalker.Walk(_fixture.Memory, _fixture.Table, _fixture.Size, 0, ref chain);
        return error == ChainError.None ? chain.Count : -1;
    }

    [Benchmark]
    public int Indirect128k()
    {
        var chain = new ChainBuffers(_segments, 256);
        var error = DescriptorChainWalker.Walk(_fixture.Memory, _fixture.Table, _fixture.Size, _indirectHead, ref chain);
        return error == ChainError.None ? chain.Count : -1;
    }
}
