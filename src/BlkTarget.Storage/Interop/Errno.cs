using System.Runtime.InteropServices;

namespace BlkTarget.Storage.Interop;

/// <summary>errno values the target inspects (Linux numbering), and conversion of a failed syscall into an exception.</summary>
public static class Errno
{
    public const int EINTR = 4;
    public const int EIO = 5;
    public const int ENXIO = 6;
    public const int EBADF = 9;
    public const int EAGAIN = 11;
    public const int EWOULDBLOCK = EAGAIN;
    public const int EINVAL = 22;
    public const int ENOSPC = 28;
    public const int EPIPE = 32;
    public const int EOPNOTSUPP = 95;
    public const int ECONNRESET = 104;

    /// <summary>errno of the last LibraryImport call made with SetLastError on this thread.</summary>
    public static int Last => Marshal.GetLastPInvokeError();

    /// <summary>The C library's text for <see cref="Last"/> (strerror).</summary>
    public static string LastMessage => Marshal.GetPInvokeErrorMessage(Last);

    /// <summary>
    /// An exception for the syscall that just failed: message "<paramref name="what"/> failed: TEXT (errno N)",
    /// <see cref="Exception.HResult"/> = errno, so callers can filter on it (e.g. EAGAIN).
    /// </summary>
    public static IOException Exception(string what)
    {
        int errno = Last;
        return new IOException(Describe(what, errno), errno);
    }

    /// <summary>"<paramref name="what"/> failed: TEXT (errno N)": how every failed syscall is reported.</summary>
    public static string Describe(string what, int errno) => $"{what} failed: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})";
}
