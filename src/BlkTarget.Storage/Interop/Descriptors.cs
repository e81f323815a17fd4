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

    [LibraryImport("libc", SetLastError = true)]
    public static partial nint write(int fd, void* buf, nint count);

    /// <summary>poll(2) on one fd; returns 1 when ready, 0 on timeout, -1 on error.</summary>
    [LibraryImport("libc", SetLastError = true)]
    public static partial int poll(PollFd* fds, nuint count, int timeoutMs);

    public const short POLLIN = 1;

    public struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    public static OwnedFd CreateEventFd()
    {
        int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (fd < 0) throw new IOException($"eventfd failed: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
        return new OwnedFd(fd);
    }

    /// <summary>Adds one to an eventfd's counter (wakes its waiter); errors are ignored (nobody to tell).</summary>
    public static void SignalEventFd(int fd)
    {
        ulong one = 1;
        write(fd, &one, sizeof(ulong));
    }

    /// <summary>Waits up to <paramref name="timeoutMs"/> (-1: forever) for an eventfd to be signalled, then resets it.</summary>
    public static void WaitEventFd(int fd, int timeoutMs)
    {
        var p = new PollFd { Fd = fd, Events = POLLIN };
        if (poll(&p, 1, timeoutMs) > 0) DrainEventFd(fd);
    }

    public static void DrainEventFd(int fd)
    {
        ulong value;
        read(fd, &value, sizeof(ulong));
    }
}
