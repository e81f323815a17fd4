using System.Runtime.InteropServices;

namespace BlkTarget.Storage.Interop;

/// <summary>memfd_create(2): shared "guest memory" for the test/benchmark frontend.</summary>
public static partial class MemFd
{
    private const uint MFD_CLOEXEC = 1;
    private const uint MFD_HUGETLB = 4;
    /// <summary>MFD_HUGE_2MB: log2(2 MiB) in bits 26-31 (MFD_HUGE_SHIFT).</summary>
    private const uint MFD_HUGE_2MB = 21u << 26;

    [LibraryImport("libc", EntryPoint = "memfd_create", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int memfd_create(string name, uint flags);

    /// <summary>A memfd of <paramref name="size"/> bytes; with <paramref name="hugePages"/> backed by 2 MiB hugetlb
    /// pages (size must be a multiple of 2 MiB; the pages come from the pool reserved in /proc/sys/vm/nr_hugepages).</summary>
    /// <exception cref="IOException">memfd_create or ftruncate failed (HResult = errno).</exception>
    public static OwnedFd Create(string name, long size, bool hugePages = false)
    {
        uint flags = MFD_CLOEXEC | (hugePages ? MFD_HUGETLB | MFD_HUGE_2MB : 0);
        var fd = OwnedFd.FromResult(memfd_create(name, flags), hugePages ? "memfd_create(MFD_HUGETLB)" : "memfd_create");
        if (FileNative.ftruncate(fd.Fd, size) != 0)
        {
            var error = Errno.Exception("ftruncate(memfd)");
            fd.Dispose();
            throw error;
        }
        return fd;
    }
}
