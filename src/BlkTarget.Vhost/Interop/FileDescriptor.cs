using System.Runtime.InteropServices;

namespace BlkTarget.Vhost.Interop;

/// <summary>
/// Owns one Linux file descriptor and closes it exactly once. Every fd this process receives from a
/// frontend or creates itself (eventfd, epoll, memfd) lives in one of these.
/// </summary>
public sealed class FileDescriptor : SafeHandle
{
    public FileDescriptor(int fd) : base(new IntPtr(-1), ownsHandle: true) => SetHandle(new IntPtr(fd));

    public static FileDescriptor Invalid => new(-1);

    public override bool IsInvalid => handle.ToInt64() < 0;

    /// <summary>The raw fd number; only valid while this object is alive and not disposed.</summary>
    public int Fd => (int)handle.ToInt64();

    protected override bool ReleaseHandle() => Libc.close((int)handle.ToInt64()) == 0;

    /// <summary>Creates an owner for <paramref name="fd"/>, or throws with errno when a syscall returned -1.</summary>
    public static FileDescriptor FromResult(int fd, string what)
    {
        if (fd < 0) throw Errno.Exception(what);
        return new FileDescriptor(fd);
    }
}
