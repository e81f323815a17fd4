using System.Runtime.InteropServices;

namespace BlkTarget.Storage.Interop;

/// <summary>memfd_create(2): shared "guest memory" for the test/benchmark frontend.</summary>
public static partial class MemFd
{
    private const uint MFD_CLOEXEC = 1;

    [LibraryImport("libc", EntryPoint = "memfd_create", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int memfd_create(string name, uint flags);

    public static OwnedFd Create(string name, long size)
    {
        var fd = OwnedFd.FromResult(memfd_create(name, MFD_CLOEXEC), "memfd_create");
        if (FileNative.ftruncate(fd.Fd, size) != 0)
        {
            var error = Errno.Exception("ftruncate(memfd)");
            fd.Dispose();
            throw error;
        }
        return fd;
    }
}
