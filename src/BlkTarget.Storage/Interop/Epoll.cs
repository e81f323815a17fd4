using System.Runtime.InteropServices;

namespace BlkTarget.Storage.Interop;

/// <summary>epoll(7): where an idle reactor sleeps on its kick eventfds and wake-up eventfd.</summary>
public static unsafe partial class Epoll
{
    public const uint EPOLLIN = 0x001;
    public const uint EPOLLOUT = 0x004;
    public const uint EPOLLERR = 0x008;
    public const uint EPOLLHUP = 0x010;
    private const int EPOLL_CTL_ADD = 1;
    private const int EPOLL_CTL_DEL = 2;
    private const int EPOLL_CTL_MOD = 3;
    private const int EPOLL_CLOEXEC = 0x80000;

    /// <summary>struct epoll_event is packed on x86-64: u32 events followed directly by u64 data.</summary>
    [StructLayout(LayoutKind.Sequential, Pack = 4)]
    public struct Event
    {
        public uint Events;
        public ulong Data;
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int epoll_create1(int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int epoll_ctl(int epfd, int op, int fd, Event* ev);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int epoll_wait(int epfd, Event* events, int maxevents, int timeout);

    public static OwnedFd Create() => OwnedFd.FromResult(epoll_create1(EPOLL_CLOEXEC), "epoll_create1");

    public static void Add(OwnedFd epoll, int fd, ulong data) => Add(epoll, fd, data, EPOLLIN);

    /// <summary>Adds <paramref name="fd"/> for <paramref name="events"/> (EPOLLIN, EPOLLOUT), level-triggered.</summary>
    public static void Add(OwnedFd epoll, int fd, ulong data, uint events)
    {
        var ev = new Event { Events = events, Data = data };
        if (epoll_ctl(epoll.Fd, EPOLL_CTL_ADD, fd, &ev) != 0) throw Errno.Exception("epoll_ctl(ADD)");
    }

    /// <summary>Changes the events <paramref name="fd"/> is watched for.</summary>
    public static void Modify(OwnedFd epoll, int fd, ulong data, uint events)
    {
        var ev = new Event { Events = events, Data = data };
        if (epoll_ctl(epoll.Fd, EPOLL_CTL_MOD, fd, &ev) != 0) throw Errno.Exception("epoll_ctl(MOD)");
    }

    /// <summary>Removes an fd; failures are ignored because the fd may already be closed, which removes it too.</summary>
    public static void Remove(OwnedFd epoll, int fd)
    {
        var ev = default(Event);
        epoll_ctl(epoll.Fd, EPOLL_CTL_DEL, fd, &ev);
    }

    /// <summary>Waits for readiness; returns the number of events (0 on timeout or EINTR).</summary>
    public static int Wait(OwnedFd epoll, Span<Event> events, int timeoutMs)
    {
        fixed (Event* p = events)
        {
            int n = epoll_wait(epoll.Fd, p, events.Length, timeoutMs);
            if (n < 0)
            {
                if (Errno.Last == Errno.EINTR) return 0;
                throw Errno.Exception("epoll_wait");
            }
            return n;
        }
    }
}
