using System.Runtime.InteropServices;

namespace BlkTarget.Storage.Interop;

/// <summary>eventfd(2): the kick and call notifications of a virtqueue, and reactor wake-ups.</summary>
public static unsafe partial class EventFd
{
    public const int EFD_NONBLOCK = 0x800;
    public const int EFD_CLOEXEC = 0x80000;

    [LibraryImport("libc", EntryPoint = "eventfd", SetLastError = true)]
    private static partial int eventfd(uint initval, int flags);

    /// <summary>Creates an eventfd with counter 0, close-on-exec, non-blocking unless asked otherwise.</summary>
    /// <exception cref="IOException">eventfd failed (HResult = errno).</exception>
    public static OwnedFd Create(bool nonBlocking = true) =>
        OwnedFd.FromResult(eventfd(0, EFD_CLOEXEC | (nonBlocking ? EFD_NONBLOCK : 0)), "eventfd");

    /// <summary>Adds one to the counter (wakes the waiter). Errors are ignored on purpose: a frontend may
    /// have closed its end, and a lost signal to a dead peer harms nobody.</summary>
    public static void Signal(int fd)
    {
        ulong one = 1;
        FileNative.write(fd, &one, sizeof(ulong));
    }

    /// <summary>Resets the counter of a non-blocking eventfd; returns the value read (0 if nothing was pending).</summary>
    public static ulong Drain(int fd)
    {
        ulong value = 0;
        return FileNative.read(fd, &value, sizeof(ulong)) == sizeof(ulong) ? value : 0;
    }

    /// <summary>Blocks on a blocking eventfd until it is signalled; false if the read failed (e.g. EBADF).</summary>
    public static bool Wait(int fd)
    {
        ulong value = 0;
        while (true)
        {
            nint n = FileNative.read(fd, &value, sizeof(ulong));
            if (n == sizeof(ulong)) return true;
            if (n < 0 && Errno.Last == Errno.EINTR) continue;
            return false;
        }
    }

    /// <summary>Waits up to <paramref name="timeoutMs"/> milliseconds (-1: forever) for a non-blocking eventfd to be
    /// signalled, then resets it. Returns whether it was signalled.</summary>
    public static bool WaitFor(int fd, int timeoutMs)
    {
        var p = new PollFd { Fd = fd, Events = POLLIN };
        if (poll(&p, 1, timeoutMs) <= 0) return false;
        Drain(fd);
        return true;
    }

    private const short POLLIN = 1;

    private struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int poll(PollFd* fds, nuint count, int timeoutMs);

    /// <summary>Sets O_NONBLOCK on an eventfd received from a frontend (which may have made it blocking), so
    /// that <see cref="Drain"/> never blocks. Errors are ignored: a bad fd fails later where it is used.</summary>
    public static void SetNonBlocking(int fd)
    {
        int flags = FileNative.fcntl(fd, FileNative.F_GETFL, 0);
        if (flags >= 0) FileNative.fcntl(fd, FileNative.F_SETFL, flags | FileNative.O_NONBLOCK);
    }
}
