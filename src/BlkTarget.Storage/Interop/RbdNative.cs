using System.Runtime.InteropServices;

namespace BlkTarget.Storage.Interop;

/// <summary>
/// The parts of librados (librados.so.2) and librbd (librbd.so.1) the rbd backend uses, by their C names. Handles are
/// opaque pointers (rados_t, rados_ioctx_t, rbd_image_t, rbd_completion_t); functions return 0 or a byte count on
/// success and a negative errno on failure (they do not set errno). Owners of the handles: <see cref="RadosHandle"/>,
/// <see cref="RadosIoCtxHandle"/>, <see cref="RbdImageHandle"/>; completions belong to the channel slot that issued them.
/// </summary>
public static unsafe partial class RbdNative
{
    private const string Rados = "librados.so.2";
    private const string Rbd = "librbd.so.1";

    /// <summary>rbd_set_image_notification's type: the fd is an eventfd (librbd writes 1 per completion).</summary>
    public const int EVENT_TYPE_EVENTFD = 2;

    [LibraryImport(Rados, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int rados_create(out nint cluster, string? id);

    [LibraryImport(Rados, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int rados_conf_read_file(nint cluster, string? path);

    [LibraryImport(Rados, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int rados_conf_set(nint cluster, string option, string value);

    [LibraryImport(Rados)]
    public static partial int rados_connect(nint cluster);

    [LibraryImport(Rados)]
    public static partial void rados_shutdown(nint cluster);

    [LibraryImport(Rados, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int rados_ioctx_create(nint cluster, string poolName, out nint ioctx);

    [LibraryImport(Rados)]
    public static partial void rados_ioctx_destroy(nint ioctx);

    [LibraryImport(Rbd, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int rbd_open(nint ioctx, string name, out nint image, string? snapName);

    [LibraryImport(Rbd, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int rbd_open_read_only(nint ioctx, string name, out nint image, string? snapName);

    [LibraryImport(Rbd)]
    public static partial int rbd_close(nint image);

    [LibraryImport(Rbd)]
    public static partial int rbd_get_size(nint image, out ulong size);

    [LibraryImport(Rbd)]
    public static partial int rbd_resize(nint image, ulong size);

    [LibraryImport(Rbd)]
    public static partial int rbd_set_image_notification(nint image, int fd, int type);

    [LibraryImport(Rbd)]
    public static partial int rbd_poll_io_events(nint image, nint* completions, int count);

    [LibraryImport(Rbd)]
    public static partial int rbd_update_watch(nint image, out ulong handle, delegate* unmanaged<nint, void> callback, nint arg);

    [LibraryImport(Rbd)]
    public static partial int rbd_update_unwatch(nint image, ulong handle);

    /// <summary>A completion with no callback (completions are polled); <paramref name="arg"/> comes back from
    /// <see cref="rbd_aio_get_arg"/>.</summary>
    [LibraryImport(Rbd)]
    public static partial int rbd_aio_create_completion(nint arg, nint callback, out nint completion);

    [LibraryImport(Rbd)]
    public static partial nint rbd_aio_get_return_value(nint completion);

    [LibraryImport(Rbd)]
    public static partial nint rbd_aio_get_arg(nint completion);

    [LibraryImport(Rbd)]
    public static partial void rbd_aio_release(nint completion);

    [LibraryImport(Rbd)]
    public static partial int rbd_aio_readv(nint image, IoVec* iov, int iovCount, ulong offset, nint completion);

    [LibraryImport(Rbd)]
    public static partial int rbd_aio_writev(nint image, IoVec* iov, int iovCount, ulong offset, nint completion);

    [LibraryImport(Rbd)]
    public static partial int rbd_aio_flush(nint image, nint completion);

    [LibraryImport(Rbd)]
    public static partial int rbd_aio_discard(nint image, ulong offset, ulong length, nint completion);

    [LibraryImport(Rbd)]
    public static partial int rbd_aio_write_zeroes(nint image, ulong offset, nuint length, nint completion, int zeroFlags, int opFlags);

    /// <summary>"<paramref name="what"/> failed: TEXT (errno N)" for a librados/librbd result (-errno).</summary>
    public static string Describe(string what, int result) => Errno.Describe(what, -result);
}

/// <summary>Owns a librados cluster handle (rados_t): rados_shutdown exactly once, after every I/O context made from it.</summary>
public sealed class RadosHandle : SafeHandle
{
    public RadosHandle(nint cluster) : base(0, ownsHandle: true) => SetHandle(cluster);

    public override bool IsInvalid => handle == 0;

    protected override bool ReleaseHandle()
    {
        RbdNative.rados_shutdown(handle);
        return true;
    }
}

/// <summary>Owns an I/O context (rados_ioctx_t) of one pool. Holds a reference on its cluster handle, so the cluster is
/// shut down only after this is destroyed.</summary>
public sealed class RadosIoCtxHandle : SafeHandle
{
    private readonly RadosHandle _cluster;

    /// <exception cref="IOException">the pool cannot be opened (HResult = errno).</exception>
    public RadosIoCtxHandle(RadosHandle cluster, string pool) : base(0, ownsHandle: true)
    {
        bool added = false;
        cluster.DangerousAddRef(ref added);
        _cluster = cluster;
        int r = RbdNative.rados_ioctx_create(cluster.DangerousGetHandle(), pool, out nint ioctx);
        if (r < 0)
        {
            cluster.DangerousRelease();
            throw new IOException(RbdNative.Describe($"opening pool {pool}", r), -r);
        }
        SetHandle(ioctx);
    }

    public override bool IsInvalid => handle == 0;

    protected override bool ReleaseHandle()
    {
        RbdNative.rados_ioctx_destroy(handle);
        _cluster.DangerousRelease();
        return true;
    }
}

/// <summary>Owns an open image (rbd_image_t): rbd_close exactly once (which waits for the image's outstanding I/O).
/// Holds a reference on its I/O context.</summary>
public sealed class RbdImageHandle : EnterableHandle
{
    private readonly RadosIoCtxHandle _ioctx;

    /// <exception cref="IOException">the image cannot be opened (HResult = errno, e.g. ENOENT).</exception>
    public RbdImageHandle(RadosIoCtxHandle ioctx, string name, bool readOnly)
    {
        bool added = false;
        ioctx.DangerousAddRef(ref added);
        _ioctx = ioctx;
        nint image;
        int r = readOnly
            ? RbdNative.rbd_open_read_only(ioctx.DangerousGetHandle(), name, out image, null)
            : RbdNative.rbd_open(ioctx.DangerousGetHandle(), name, out image, null);
        if (r < 0)
        {
            ioctx.DangerousRelease();
            throw new IOException(RbdNative.Describe($"opening image {name}", r), -r);
        }
        SetHandle(image);
    }

    protected override bool ReleaseHandle()
    {
        RbdNative.rbd_close(handle);
        _ioctx.DangerousRelease();
        return true;
    }
}
