using System.Runtime.InteropServices;

namespace BlkTarget.Vhost.Interop;

/// <summary>eventfd(2): the kick and call notifications of a virtqueue, and reactor wake-ups.</summary>
public static unsafe partial class EventFd
{
    public const int EFD_NONBLOCK = 0x800;
    public const int EFD_CLOEXEC = 0x80000;

    [LibraryImport("libc", EntryPoint = "eventfd", SetLastError = true)]
    private static partial int eventfd(uint initval, int flags);

    public static FileDescriptor Create(bool nonBlocking = true) =>
        FileDescriptor.FromResult(eventfd(0, EFD_CLOEXEC | (nonBlocking ? EFD_NONBLOCK : 0)), "eventfd");

    /// <summary>Adds one to the counter (wakes the waiter). Errors are ignored on purpose: a frontend may
    /// have closed its end, and a lost signal to a dead peer harms nobody.</summary>
    public static void Signal(int fd)
    {
        ulong one = 1;
        Libc.write(fd, &one, sizeof(ulong));
    }

    /// <summary>Resets the counter of a non-blocking eventfd; returns the value read (0 if nothing was pending).</summary>
    public static ulong Drain(int fd)
    {
        ulong value = 0;
        return Libc.read(fd, &value, sizeof(ulong)) == sizeof(ulong) ? value : 0;
    }

    /// <summary>Blocks on a blocking eventfd until it is signalled.</summary>
    public static bool Wait(int fd)
    {
        ulong value = 0;
        while (true)
        {
            nint n = Libc.read(fd, &value, sizeof(ulong));
            if (n == sizeof(ulong)) return true;
            if (n < 0 && Errno.Last == Errno.EINTR) continue;
            return false;
        }
    }

    public static void SetNonBlocking(int fd)
    {
        int flags = Libc.fcntl(fd, Libc.F_GETFL, 0);
        if (flags >= 0) Libc.fcntl(fd, Libc.F_SETFL, flags | Libc.O_NONBLOCK);
    }
}
