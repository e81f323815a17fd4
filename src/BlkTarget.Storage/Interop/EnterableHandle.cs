using System.Runtime.InteropServices;

namespace BlkTarget.Storage.Interop;

/// <summary>
/// A native library handle (librbd image, libnbd handle) that calls on several threads use while another thread may
/// close it: each call brackets itself with <see cref="TryEnter"/> / <see cref="Exit"/>, and the close
/// (<see cref="SafeHandle.ReleaseHandle"/>) runs only once every call in progress has given its reference back, so no
/// call ever gets a handle that is being freed. 0 is the invalid value.
/// </summary>
public abstract class EnterableHandle() : SafeHandle(0, ownsHandle: true)
{
    public override bool IsInvalid => handle == 0;

    /// <summary>The handle for one call, or 0 once it is closed (or closing). A nonzero result must be given back with
    /// <see cref="Exit"/>: until then the close waits.</summary>
    public nint TryEnter()
    {
        bool added = false;
        try
        {
            DangerousAddRef(ref added);
        }
        catch (ObjectDisposedException)
        {
            return 0;
        }
        return handle;
    }

    /// <summary>Gives back the reference <see cref="TryEnter"/> took.</summary>
    public void Exit() => DangerousRelease();
}
