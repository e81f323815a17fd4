using System.Runtime.InteropServices;
using BlkTarget.Storage.Interop;
using static BlkTarget.Storage.Interop.RbdNative;

namespace BlkTarget.Storage.Rbd;

/// <summary>
/// Owns one rbd_update_watch registration: librbd calls back (on its own thread) whenever the image's header changes,
/// e.g. after <c>rbd resize</c> from another client; the callback only queues <paramref name="updated"/> on the thread
/// pool, which then may call into librbd (rbd_get_size) without running on librbd's thread. Disposing unregisters
/// (rbd_update_unwatch waits for a callback in progress) before the image is closed.
/// </summary>
internal sealed unsafe class RbdSizeWatch : IDisposable
{
    private readonly RbdImageHandle _image;
    private readonly Action _updated;
    private GCHandle _self;
    private ulong _handle;
    private bool _watching;

    /// <param name="image">The open image; must stay open until this is disposed.</param>
    /// <param name="updated">Runs on a thread-pool thread after each header change.</param>
    public RbdSizeWatch(RbdImageHandle image, Action updated)
    {
        _image = image;
        _updated = updated;
        _self = GCHandle.Alloc(this);
        int r = rbd_update_watch(image.DangerousGetHandle(), out _handle, &OnUpdate, GCHandle.ToIntPtr(_self));
        if (r < 0)
        {
            _self.Free();
            throw new IOException(Describe("rbd_update_watch", r), -r);
        }
        _watching = true;
    }

    [System.Runtime.InteropServices.UnmanagedCallersOnly]
    private static void OnUpdate(nint argument)
    {
        if (GCHandle.FromIntPtr(argument).Target is RbdSizeWatch watch)
            ThreadPool.UnsafeQueueUserWorkItem(static w => w._updated(), watch, preferLocal: false);
    }

    public void Dispose()
    {
        if (!_watching) return;
        _watching = false;
        rbd_update_unwatch(_image.DangerousGetHandle(), _handle);
        _self.Free();
    }
}
