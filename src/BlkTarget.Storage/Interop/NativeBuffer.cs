using System.Runtime.InteropServices;

namespace BlkTarget.Storage.Interop;

/// <summary>Owns a zeroed, aligned block of native memory allocated once (request slots, iovec arrays).</summary>
public sealed unsafe class NativeBuffer : SafeHandle
{
    public NativeBuffer(nuint length, nuint alignment = 64) : base(IntPtr.Zero, true)
    {
        Length = length;
        SetHandle((nint)NativeMemory.AlignedAlloc(length == 0 ? 1 : length, alignment));
        NativeMemory.Clear((void*)handle, length);
    }

    public nuint Length { get; }
    public byte* Pointer => (byte*)handle;
    public override bool IsInvalid => handle == IntPtr.Zero;

    protected override bool ReleaseHandle()
    {
        NativeMemory.AlignedFree((void*)handle);
        return true;
    }
}
