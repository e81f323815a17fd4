using System.Runtime.InteropServices;

namespace BlkTarget.Storage.Interop;

/// <summary>
/// The parts of libnbd (libnbd.so.0, 1.14 on Debian 12) the nbd backend uses, by their C names. A handle
/// (struct nbd_handle *) is owned by <see cref="NbdHandle"/>. Calls return -1 on failure with the reason in libnbd's
/// thread-local error (<see cref="LastError"/>, <see cref="nbd_get_errno"/>); aio calls return a cookie (≥ 1).
/// libnbd serialises calls on one handle with its own lock, so several threads may issue commands on it; only one may
/// drive its socket (notify read/write).
/// </summary>
public static unsafe partial class NbdNative
{
    private const string Lib = "libnbd.so.0";

    public const uint AIO_DIRECTION_READ = 1;
    public const uint AIO_DIRECTION_WRITE = 2;
    public const uint CMD_FLAG_FUA = 0x01;
    /// <summary>Write-zeroes must write zeros instead of punching a hole.</summary>
    public const uint CMD_FLAG_NO_HOLE = 0x02;
    public const int SIZE_MINIMUM = 0;
    public const int SIZE_MAXIMUM = 2;

    /// <summary>nbd_completion_callback, passed by value: called once per queued command (never for a call that
    /// returned -1), under the handle's lock, on the thread that runs the state machine. Returning 1 retires it.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct CompletionCallback
    {
        public delegate* unmanaged<nint, int*, int> Callback;
        public nint UserData;
        public nint Free;
    }

    [LibraryImport(Lib)]
    public static partial nint nbd_create();

    [LibraryImport(Lib)]
    public static partial void nbd_close(nint h);

    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int nbd_connect_uri(nint h, string uri);

    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int nbd_set_handle_name(nint h, string name);

    [LibraryImport(Lib)]
    public static partial long nbd_get_size(nint h);

    /// <summary>Whether libnbd zeroes a read's buffer before the server fills it (C bool: 1 = yes, the default).</summary>
    [LibraryImport(Lib)]
    public static partial int nbd_set_pread_initialize(nint h, byte request);

    [LibraryImport(Lib)]
    public static partial long nbd_get_block_size(nint h, int sizeType);

    [LibraryImport(Lib)]
    public static partial int nbd_is_read_only(nint h);

    [LibraryImport(Lib)]
    public static partial int nbd_can_flush(nint h);

    [LibraryImport(Lib)]
    public static partial int nbd_can_fua(nint h);

    [LibraryImport(Lib)]
    public static partial int nbd_can_trim(nint h);

    [LibraryImport(Lib)]
    public static partial int nbd_can_zero(nint h);

    [LibraryImport(Lib)]
    public static partial int nbd_can_multi_conn(nint h);

    [LibraryImport(Lib)]
    public static partial int nbd_aio_get_fd(nint h);

    [LibraryImport(Lib)]
    public static partial uint nbd_aio_get_direction(nint h);

    [LibraryImport(Lib)]
    public static partial int nbd_aio_notify_read(nint h);

    [LibraryImport(Lib)]
    public static partial int nbd_aio_notify_write(nint h);

    [LibraryImport(Lib)]
    public static partial int nbd_aio_is_dead(nint h);

    [LibraryImport(Lib)]
    public static partial int nbd_aio_is_closed(nint h);

    [LibraryImport(Lib)]
    public static partial long nbd_aio_pread(nint h, byte* buf, nuint count, ulong offset, CompletionCallback completion, uint flags);

    [LibraryImport(Lib)]
    public static partial long nbd_aio_pwrite(nint h, byte* buf, nuint count, ulong offset, CompletionCallback completion, uint flags);

    [LibraryImport(Lib)]
    public static partial long nbd_aio_flush(nint h, CompletionCallback completion, uint flags);

    [LibraryImport(Lib)]
    public static partial long nbd_aio_trim(nint h, ulong count, ulong offset, CompletionCallback completion, uint flags);

    [LibraryImport(Lib)]
    public static partial long nbd_aio_zero(nint h, ulong count, ulong offset, CompletionCallback completion, uint flags);

    [LibraryImport(Lib)]
    public static partial int nbd_get_errno();

    [LibraryImport(Lib)]
    private static partial nint nbd_get_error();

    /// <summary>libnbd's message for the last failed call on this thread.</summary>
    public static string LastError => Marshal.PtrToStringUTF8(nbd_get_error()) ?? "unknown libnbd error";
}

/// <summary>
/// Owns one libnbd handle: nbd_close exactly once, and never while a call is inside it (<see cref="TryEnter"/>/<see
/// cref="Exit"/> count callers with the SafeHandle reference count, interlocked, no lock). nbd_close also closes the
/// socket.
/// </summary>
public sealed class NbdHandle : EnterableHandle
{
    /// <exception cref="IOException">nbd_create failed.</exception>
    public NbdHandle()
    {
        nint h = NbdNative.nbd_create();
        if (h == 0) throw new IOException($"nbd_create failed: {NbdNative.LastError}");
        SetHandle(h);
    }

    protected override bool ReleaseHandle()
    {
        NbdNative.nbd_close(handle);
        return true;
    }
}
