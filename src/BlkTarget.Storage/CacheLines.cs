using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;
using BlkTarget.Storage.Interop;

namespace BlkTarget.Storage;

/// <summary>
/// Cache hints. Prefetch asks the CPU to start loading cache lines a later step will read; Demote moves a line this
/// core wrote (or read) out of its private caches for another core to take. Hints only: nothing is read into the
/// program, no fault is raised even for an unmapped address, and a CPU without the instruction does nothing.
/// </summary>
public static unsafe class CacheLines
{
    public const int LineBytes = 64;

    /// <summary>x86-64 machine code of the demote stub, <c>cldemote [rdi]; ret</c> (System V: the address arrives in
    /// rdi). CLDEMOTE (0F 1C /0, Intel SDM vol. 2A) lies in the hint-NOP space of CPUs that lack it.</summary>
    internal static ReadOnlySpan<byte> DemoteStubCode => [0x0F, 0x1C, 0x07, 0xC3];

    /// <summary>The stub's page, mapped once for the life of the process; null without CLDEMOTE.</summary>
    private static readonly MappedMemory? s_demoteStub = CreateDemoteStub();
    private static readonly delegate* unmanaged[SuppressGCTransition]<void*, void> s_demote =
        s_demoteStub is null ? null : (delegate* unmanaged[SuppressGCTransition]<void*, void>)s_demoteStub.Pointer;

    /// <summary>True when <see cref="Demote"/> does something: an x86-64 CPU that reports CLDEMOTE (CPUID leaf 7,
    /// ECX bit 25) and a system that let the stub's page be executable.</summary>
    public static bool CanDemote => s_demote != null;

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

    /// <summary>
    /// Moves the line holding <paramref name="address"/> from this core's private caches to the cache all cores
    /// share (CLDEMOTE). For a line another CPU reads next (a used ring entry, a status byte) or writes next (a
    /// descriptor the driver reuses): its access then hits the shared cache instead of waiting for this core to hand
    /// the line over. .NET has no intrinsic for it, hence the stub; a call costs a few nanoseconds.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Demote(void* address)
    {
        if (s_demote != null) s_demote(address);
    }

    private static MappedMemory? CreateDemoteStub()
    {
        if (RuntimeInformation.ProcessArchitecture != Architecture.X64 || !X86Base.IsSupported) return null;
        if ((X86Base.CpuId(7, 0).Ecx & (1 << 25)) == 0) return null;
        try
        {
            return MappedMemory.MapCode(DemoteStubCode);
        }
        catch (IOException)
        {
            return null;   // executable memory refused: the hint is an optimisation only
        }
    }
}
