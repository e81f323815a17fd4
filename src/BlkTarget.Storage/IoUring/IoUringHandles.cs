using System.Runtime.InteropServices;
using BlkTarget.Storage.Interop;

namespace BlkTarget.Storage.IoUring;

/// <summary>Owns one of the ring's mmap'ed areas (SQ ring, CQ ring, SQE array).</summary>
internal sealed unsafe class RingMapping : SafeHandle
{
    private RingMapping(nint address, nuint length) : base(IntPtr.Zero, true)
    {
        SetHandle(address);
        Length = length;
    }

    public nuint Length { get; }
    public byte* Pointer => (byte*)handle;
    public override bool IsInvalid => handle == IntPtr.Zero;

    public static RingMapping Map(OwnedFd ring, nuint length, long offset)
    {
        nint p = IoUringNative.mmap(0, length, IoUringNative.ProtRead | IoUringNative.ProtWrite,
            IoUringNative.MapShared | IoUringNative.MapPopulate, ring.Fd, offset);
        if (p == -1) throw IoUringException.FromErrno($"mmap of io_uring area at 0x{offset:x}");
        return new RingMapping(p, length);
    }

    protected override bool ReleaseHandle() => IoUringNative.munmap(handle, Length) == 0;
}

public sealed class IoUringException(string message, int errno) : IOException(message)
{
    public int Errno { get; } = errno;

    internal static IoUringException FromErrno(string what)
    {
        int errno = Interop.Errno.Last;
        return new IoUringException(Interop.Errno.Describe(what, errno), errno);
    }
}
