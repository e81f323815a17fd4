using System.Runtime.InteropServices;

namespace BlkTarget.Storage.Interop;

/// <summary>sched_setaffinity(2) for pinning the calling reactor thread to one CPU.</summary>
public static unsafe partial class Affinity
{
    [LibraryImport("libc", SetLastError = true)]
    private static partial int sched_setaffinity(int pid, nint cpusetsize, ulong* mask);

    /// <summary>Pins the calling thread (pid 0 = this thread) to <paramref name="cpu"/>.</summary>
    public static void PinCurrentThread(int cpu)
    {
        if (cpu < 0 || cpu >= 1024) throw new ArgumentOutOfRangeException(nameof(cpu));
        ulong* mask = stackalloc ulong[16];
        for (int i = 0; i < 16; i++) mask[i] = 0;
        mask[cpu / 64] = 1UL << (cpu % 64);
        if (sched_setaffinity(0, 16 * sizeof(ulong), mask) != 0) throw Errno.Exception($"sched_setaffinity(cpu {cpu})");
    }
}
