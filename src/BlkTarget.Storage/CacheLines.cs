using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics.X86;

namespace BlkTarget.Storage;

/// <summary>
/// Software prefetch: asks the CPU to start loading cache lines a later step will read. A hint only: nothing is read
/// into the program, no fault is raised even for an unmapped address, and without SSE it does nothing.
/// </summary>
public static unsafe class CacheLines
{
    public const int LineBytes = 64;

    /// <summary>True when <see cref="Prefetch(void*)"/> does something on this CPU.</summary>
    public static bool CanPrefetch => Sse.IsSupported;

    /// <summary>Requests the line holding <paramref name="address"/> into every cache level.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Prefetch(void* address)
    {
        if (Sse.IsSupported) Sse.Prefetch0(address);
    }

    /// <summary>Requests every line of the <paramref name="bytes"/> bytes from <paramref name="start"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Prefetch(byte* start, ulong bytes)
    {
        if (!Sse.IsSupported) return;
        for (ulong i = 0; i < bytes; i += LineBytes) Sse.Prefetch0(start + i);
    }
}
