using System.Runtime.InteropServices;

namespace BlkTarget.Storage;

/// <summary>
/// One scatter-gather element, laid out exactly like the C <c>struct iovec</c> so arrays of them can be handed
/// to readv/writev and io_uring unchanged. For virtio devices the base points straight into guest memory.
/// </summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct IoVec
{
    public byte* Base;
    public nuint Length;

    public IoVec(byte* @base, nuint length)
    {
        Base = @base;
        Length = length;
    }
}
