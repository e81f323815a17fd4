using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace BlkTarget.Storage.Interop;

/// <summary>
/// Owns one mmap(2) mapping and unmaps it exactly once: guest memory regions and the frontend's memfd "guest
/// RAM" (shared mappings of an fd), and the RAM disk's medium (a private anonymous mapping).
/// </summary>
public sealed unsafe partial class MappedMemory : SafeHandle
{
    /// <summary>The page size mmap and madvise work in, in bytes.</summary>
    public const ulong PageSize = 4096;

    private const int PROT_READ = 1;
    private const int PROT_WRITE = 2;
    private const int MAP_SHARED = 0x01, MAP_PRIVATE = 0x02, MAP_ANONYMOUS = 0x20, MAP_NORESERVE = 0x4000;
    private const int MADV_DONTNEED = 4;
    private static readonly nint MapFailed = -1;

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint mmap(nint addr, nuint length, int prot, int flags, int fd, long offset);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int munmap(nint addr, nuint length);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int madvise(nint addr, nuint length, int advice);

    // MADV_DONTNEED zeroes only private anonymous pages; in a shared mapping the data stays in the file.
    private readonly bool _privateAnonymous;

    private MappedMemory(nint address, ulong length, bool privateAnonymous) : base(IntPtr.Zero, ownsHandle: true)
    {
        SetHandle(address);
        Length = length;
        _privateAnonymous = privateAnonymous;
    }

    /// <summary>Length of the mapping in bytes.</summary>
    public ulong Length { get; }

    public byte* Pointer => (byte*)handle;

    public override bool IsInvalid => handle == IntPtr.Zero;

    protected override bool ReleaseHandle() => munmap(handle, (nuint)Length) == 0;

    /// <summary>Maps <paramref name="length"/> bytes of <paramref name="fd"/> from <paramref name="offset"/>
    /// (which must be page-aligned) shared and read-write.</summary>
    /// <exception cref="ArgumentOutOfRangeException">length is 0 or above long.MaxValue.</exception>
    /// <exception cref="IOException">mmap failed (HResult = errno).</exception>
    public static MappedMemory MapShared(int fd, ulong length, long offset = 0)
    {
        if (length == 0 || length > long.MaxValue) throw new ArgumentOutOfRangeException(nameof(length), "mapping size must be positive");
        nint p = mmap(0, (nuint)length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, offset);
        if (p == MapFailed) throw Errno.Exception($"mmap({length} bytes at offset {offset})");
        return new MappedMemory(p, length, privateAnonymous: false);
    }

    /// <summary>
    /// Reserves <paramref name="length"/> bytes of zeroed private memory (MAP_NORESERVE): pages are committed on
    /// first write, so a large RAM disk costs nothing until used.
    /// </summary>
    /// <exception cref="IOException">mmap failed (HResult = errno).</exception>
    public static MappedMemory MapAnonymous(ulong length)
    {
        if (length == 0 || length > long.MaxValue) throw new ArgumentOutOfRangeException(nameof(length), "mapping size must be positive");
        nint p = mmap(0, (nuint)length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MapFailed) throw Errno.Exception($"reserving {length} bytes of memory (mmap)");
        return new MappedMemory(p, length, privateAnonymous: true);
    }

    /// <summary>
    /// Sets bytes [offset, offset+length) to zero. In an anonymous mapping whole pages are given back to the
    /// kernel (MADV_DONTNEED: they read as zeros again); partial pages, and shared mappings, are cleared.
    /// </summary>
    public void Zero(ulong offset, ulong length)
    {
        ulong end = offset + length;
        ulong firstPage = (offset + PageSize - 1) & ~(PageSize - 1);
        ulong lastPage = end & ~(PageSize - 1);
        if (_privateAnonymous && firstPage < lastPage && madvise((nint)(Pointer + firstPage), (nuint)(lastPage - firstPage), MADV_DONTNEED) == 0)
        {
            Clear(offset, firstPage - offset);
            Clear(lastPage, end - lastPage);
        }
        else
        {
            Clear(offset, length);
        }
    }

    private void Clear(ulong offset, ulong length)
    {
        byte* p = Pointer + offset;
        while (length > 0)
        {
            uint chunk = (uint)Math.Min(length, 1u << 30);
            Unsafe.InitBlockUnaligned(p, 0, chunk);
            p += chunk;
            length -= chunk;
        }
    }
}
