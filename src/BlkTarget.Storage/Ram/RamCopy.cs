using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace BlkTarget.Storage.Ram;

/// <summary>
/// Copies bulk data in and out of a RAM disk. Into it (<see cref="Into"/>) with non-temporal (streaming) stores. A RAM disk is normally far larger than
/// the CPU caches and a block the guest writes is not read back soon, so an ordinary copy pays for a
/// read-for-ownership of every destination line from memory before overwriting it; streaming stores write whole
/// lines without reading them (4 KiB into a random block of a 1 GiB disk: about 320 ns instead of 590 ns on the
/// benchmark machines). Streaming stores are weakly ordered: after the copies of a request, and before its
/// completion is published, call <see cref="Fence"/>, or another core may read the block before the data is in it.
/// </summary>
internal static unsafe class RamCopy
{
    /// <summary>Shortest buffer (bytes) copied with streaming stores; shorter ones are copied the usual way, where
    /// the partial lines at either end would cost more than the read-for-ownership saves.</summary>
    public const nuint MinimumBytes = 2048;

    private const nuint LineBytes = 64;

    /// <summary>Copies <paramref name="length"/> bytes; true when streaming stores were used (then fence before
    /// publishing). Without AVX, or for short buffers, an ordinary copy (false).</summary>
    // AggressiveOptimization: compiled fully optimised on first use. Code with AVX is left out of the ReadyToRun image,
    // so it would otherwise start as unoptimised tier-0 code and reach tier 1 only after call counting, which the
    // start-up warm-up does not always finish: a fresh target's first second of RAM I/O ran partly on tier-0 copies.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static bool Into(byte* destination, byte* source, nuint length)
    {
        if (!Avx.IsSupported || length < MinimumBytes)
        {
            Plain(destination, source, length);
            return false;
        }
        // Ordinary stores up to the first line boundary of the destination, streaming stores for the whole lines,
        // ordinary stores for the rest.
        nuint head = (LineBytes - ((nuint)destination & (LineBytes - 1))) & (LineBytes - 1);
        Plain(destination, source, head);
        destination += head;
        source += head;
        length -= head;
        nuint body = length & ~(2 * LineBytes - 1);
        for (nuint i = 0; i < body; i += 2 * LineBytes)
        {
            var a = Avx.LoadVector256(source + i);
            var b = Avx.LoadVector256(source + i + 32);
            var c = Avx.LoadVector256(source + i + 64);
            var d = Avx.LoadVector256(source + i + 96);
            Avx.StoreAlignedNonTemporal(destination + i, a);
            Avx.StoreAlignedNonTemporal(destination + i + 32, b);
            Avx.StoreAlignedNonTemporal(destination + i + 64, c);
            Avx.StoreAlignedNonTemporal(destination + i + 96, d);
        }
        Plain(destination + body, source + body, length - body);
        return true;
    }

    /// <summary>Orders every streaming store before the stores that follow (SFENCE): the used-ring publication is
    /// an ordinary release store, which on x86 does not wait for streaming stores.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Fence()
    {
        if (Sse.IsSupported) Sse.StoreFence();
    }

    /// <summary>
    /// Copies <paramref name="length"/> bytes out of a RAM disk with ordinary stores (the guest reads what it asked
    /// for soon, so its buffer should be in a cache): 256 bytes per round in AVX registers, all in managed code.
    /// The runtime's copy of a 4 KiB block goes through a call into the C library's memmove; this loop measured a
    /// few percent more 4 KiB reads at QD1 and QD32 (interleaved runs, medians of 7 and 9).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // as Into
    public static void OutOf(byte* destination, byte* source, nuint length)
    {
        if (!Avx.IsSupported || length < 256)
        {
            Plain(destination, source, length);
            return;
        }
        nuint body = length & ~(nuint)255;
        for (nuint i = 0; i < body; i += 256)
        {
            // All loads first: eight lines' worth of misses can be outstanding at once.
            var a = Avx.LoadVector256(source + i);
            var b = Avx.LoadVector256(source + i + 32);
            var c = Avx.LoadVector256(source + i + 64);
            var d = Avx.LoadVector256(source + i + 96);
            var e = Avx.LoadVector256(source + i + 128);
            var f = Avx.LoadVector256(source + i + 160);
            var g = Avx.LoadVector256(source + i + 192);
            var h = Avx.LoadVector256(source + i + 224);
            Avx.Store(destination + i, a);
            Avx.Store(destination + i + 32, b);
            Avx.Store(destination + i + 64, c);
            Avx.Store(destination + i + 96, d);
            Avx.Store(destination + i + 128, e);
            Avx.Store(destination + i + 160, f);
            Avx.Store(destination + i + 192, g);
            Avx.Store(destination + i + 224, h);
        }
        Plain(destination + body, source + body, length - body);
    }

    /// <summary>An ordinary copy of any length (CopyBlock takes 32-bit lengths).</summary>
    public static void Plain(byte* destination, byte* source, nuint length)
    {
        while (length > 0)
        {
            uint chunk = (uint)Math.Min(length, 1u << 30);
            Unsafe.CopyBlockUnaligned(destination, source, chunk);
            destination += chunk;
            source += chunk;
            length -= chunk;
        }
    }
}
