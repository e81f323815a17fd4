using System.Runtime.InteropServices;

namespace BlkTarget.Vhost.Interop;

/// <summary>errno values the target inspects, and conversion of a failed syscall into an exception.</summary>
public static class Errno
{
    public const int EINTR = 4;
    public const int EAGAIN = 11;
    public const int EBADF = 9;
    public const int EINVAL = 22;
    public const int EPIPE = 32;
    public const int ECONNRESET = 104;

    public static int Last => Marshal.GetLastPInvokeError();

    public static IOException Exception(string what)
    {
        int errno = Last;
        return new IOException($"{what} failed: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})", errno);
    }
}
