using System.Runtime.InteropServices;

namespace BlkTarget.Storage.Interop;

/// <summary>
/// Owns one Linux file descriptor and closes it exactly once. Every fd this process opens or creates (backing
/// files, eventfds, epoll, memfd, io_uring) or receives from a frontend lives in one of these.
/// </summary>
public sealed class OwnedFd : SafeHandle
{
    /// <summary>Takes ownership of <paramref name="fd"/>; a negative value makes an invalid (never closed) owner.</summary>
    public OwnedFd(int fd) : base(new IntPtr(-1), ownsHandle: true) => SetHandle(new IntPtr(fd));

    /// <summary>An owner of nothing (fd -1): a placeholder for "no descriptor".</summary>
    public static OwnedFd Invalid => new(-1);

    public override bool IsInvalid => handle.ToInt64() < 0;

    /// <summary>The raw fd number; only valid while this object is alive and not disposed.</summary>
    public int Fd => (int)handle.ToInt64();

    protected override bool ReleaseHandle() => FileNative.close(Fd) == 0;

    /// <summary>
    /// Owns the result of a syscall that returns a new fd.
    /// </summary>
    /// <param name="fd">The syscall's return value: a descriptor, or -1 with errno set.</param>
    /// <param name="what">The call, for the error message (e.g. "eventfd").</param>
    /// <exception cref="IOException">The call failed; <see cref="Exception.HResult"/> is errno.</exception>
    public static OwnedFd FromResult(int fd, string what)
    {
        if (fd < 0) throw Errno.Exception(what);
        return new OwnedFd(fd);
    }
}
