using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;
using BenchmarkDotNet.Attributes;
using BlkTarget.Storage.Interop;
using BlkTarget.Storage.Ram;

namespace BlkTarget.Benchmarks;

/// <summary>
/// The 4 KiB copy a RAM-disk request is made of, between a random block of a 1 GiB disk-sized region (advised
/// MADV_HUGEPAGE, filled, far larger than the caches) and one of 32 guest-sized buffers: ordinary stores against the
/// streaming stores RAM-disk writes use, and reads without and with the next block's first 512 bytes prefetched
/// (what the queue's lookahead hint does), each after ~500 ns of other work as a request has around its copy.
/// <c>WorkingSetMiB</c> is how much of the region the random blocks come from: 1024 (a whole-disk random job, out of
/// cache) or 16 (a hot set the last-level cache holds: there neither change gains or loses much).
/// Each invocation takes the next 4096 of a million random blocks, so blocks are not reused between invocations.
/// Reported per copy (OperationsPerInvoke).
/// </summary>
public unsafe class RamCopyBenchmarks
{
    private const int Copies = 4096;
    private const nuint RegionBytes = 1u << 30;
    private MappedMemory _mapping = null!;
    private byte* _region;
    private byte* _buffers;
    private long[] _offsets = [];
    private int _cursor;

    [Params(16, 1024)]
    public int WorkingSetMiB { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _mapping = MappedMemory.MapAnonymous(RegionBytes, transparentHugePages: true);
        _region = _mapping.Pointer;
        new Span<byte>(_region, (int)RegionBytes).Fill(7);
        _buffers = (byte*)NativeMemory.AlignedAlloc(32 * 4096, 4096);
        new Span<byte>(_buffers, 32 * 4096).Fill(3);
        var random = new Random(1);
        _offsets = new long[(1 << 20) + 1];
        long blocks = (long)WorkingSetMiB * (1 << 20) / 4096;
        for (int i = 0; i < _offsets.Length; i++) _offsets[i] = random.NextInt64(0, blocks) * 4096;
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _mapping.Dispose();
        NativeMemory.AlignedFree(_buffers);
    }

    /// <summary>Moves to the next <see cref="Copies"/> (+1) random blocks and returns where they start in the table.</summary>
    private int NextBlocks() => _cursor = _cursor + 2 * Copies + 1 < _offsets.Length ? _cursor + Copies : 0;

    [Benchmark(OperationsPerInvoke = Copies)]
    public void WriteOrdinary()
    {
        int first = NextBlocks();
        for (int i = 0; i < Copies; i++) Unsafe.CopyBlockUnaligned(_region + _offsets[first + i], _buffers + (i & 31) * 4096, 4096);
    }

    [Benchmark(OperationsPerInvoke = Copies)]
    public void WriteStreaming()
    {
        int first = NextBlocks();
        for (int i = 0; i < Copies; i++) RamCopy.Into(_region + _offsets[first + i], _buffers + (i & 31) * 4096, 4096);
        RamCopy.Fence();
    }

    [Benchmark(OperationsPerInvoke = Copies)]
    public void ReadOrdinary()
    {
        int first = NextBlocks();
        for (int i = 0; i < Copies; i++) Unsafe.CopyBlockUnaligned(_buffers + (i & 31) * 4096, _region + _offsets[first + i], 4096);
    }

    [Benchmark(OperationsPerInvoke = Copies)]
    public void ReadOutOf()
    {
        int first = NextBlocks();
        for (int i = 0; i < Copies; i++) RamCopy.OutOf(_buffers + (i & 31) * 4096, _region + _offsets[first + i], 4096);
    }

    [Benchmark(OperationsPerInvoke = Copies)]
    public void ReadAfterWork()
    {
        int first = NextBlocks();
        for (int i = 0; i < Copies; i++)
        {
            OtherWork();
            Unsafe.CopyBlockUnaligned(_buffers + (i & 31) * 4096, _region + _offsets[first + i], 4096);
        }
    }

    [Benchmark(OperationsPerInvoke = Copies)]
    public void ReadAfterWorkNextPrefetched()
    {
        int first = NextBlocks();
        for (int i = 0; i < Copies; i++)
        {
            byte* next = _region + _offsets[first + i + 1];
            for (int line = 0; line < 512; line += 64) Sse.Prefetch0(next + line);
            OtherWork();
            Unsafe.CopyBlockUnaligned(_buffers + (i & 31) * 4096, _region + _offsets[first + i], 4096);
        }
    }

    /// <summary>About 500 ns of dependent arithmetic that touches no memory.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static ulong OtherWork()
    {
        ulong x = 1;
        for (int k = 0; k < 300; k++) x = x * 6364136223846793005UL + 1442695040888963407UL;
        return x;
    }
}
