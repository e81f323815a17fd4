using System.Runtime.InteropServices;

namespace BlkTarget.Vhost.Interop;

/// <summary>
/// Owns one mmap(2) mapping and unmaps it exactly once. Guest memory regions and the frontend's memfd
/// "guest RAM" are mappings of this kind.
/// </summary>
public sealed unsafe partial class MappedMemory : SafeHandle
{
    private const int PROT_READ = 1;
    private const int PROT_WRITE = 2;
    private const int MAP_SHARED = 1;
    private static readonly nint MapFailed = -1;

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint mmap(nint addr, nuint length, int prot, int flags, int fd, long offset);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int munmap(nint addr, nuint length);

    private MappedMemory(nint address, ulong length) : base(IntPtr.Zero, ownsHandle: true)
    {
        SetHandle(address);
        Length = length;
    }

    public ulong Length { get; }

    public byte* Pointer => (byte*)handle;

    public override bool IsInvalid => handle == IntPtr.Zero;

    protected override bool ReleaseHandle() => munmap(handle, (nuint)Length) == 0;

    /// <summary>Maps <paramref name="length"/> bytes of <paramref name="fd"/> from <paramref name="offset"/>
    /// (which must be page-aligned) shared and read-write.</summary>
    public static MappedMemory MapShared(int fd, ulong length, long offset = 0)
    {
        if (length == 0 || length > long.MaxValue) throw new ArgumentOutOfRangeException(nameof(length), "mapping size must be positive");
        nint p = mmap(0, (nuint)length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, offset);
        if (p == MapFailed) throw Errno.Exception($"mmap({length} bytes at offset {offset})");
        return new MappedMemory(p, length);
    }
}
