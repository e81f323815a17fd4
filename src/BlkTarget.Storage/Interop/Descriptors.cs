using System.Runtime.InteropServices;

namespace BlkTarget.Storage.Interop;

/// <summary>Owns one file descriptor the storage layer opened (backing files, eventfds).</summary>
internal sealed class OwnedFd : SafeHandle
{
    public OwnedFd(int fd) : base(new IntPtr(-1), true) => SetHandle(new IntPtr(fd));
    public override bool IsInvalid => handle.ToInt64() < 0;
    public int Fd => (int)handle.ToInt64();
    protected override bool ReleaseHandle() => Posix.close(Fd) == 0;
}

/// <summary>The plain POSIX calls the storage layer needs.</summary>
internal static unsafe partial class Posix
{
    public const int EFD_NONBLOCK = 0x800, EFD_CLOEXEC = 0x80000;

    [LibraryImport("libc", SetLastError = true)]
    public static partial int close(int fd);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int eventfd(uint initval, int flags);

    [LibraryImport("libc", SetLastError = true)]
    public static partial nint read(int fd, void* buf, nint count);

    public static OwnedFd CreateEventFd()
    {
        int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (fd < 0) throw new IOException($"eventfd failed: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
        return new OwnedFd(fd);
    }

    public static void DrainEventFd(int fd)
    {
        ulong value;
        read(fd, &value, sizeof(ulong));
    }
}
