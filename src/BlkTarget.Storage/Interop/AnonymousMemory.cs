using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

[assembly: DisableRuntimeMarshalling]

namespace BlkTarget.Storage.Interop;

/// <summary>
/// Owns a private anonymous mapping (MAP_NORESERVE): the RAM disk's medium. Pages are committed on first
/// write, so a large RAM disk costs nothing until used, and discarded ranges are handed back with madvise.
/// </summary>
internal sealed unsafe partial class AnonymousMemory : SafeHandle
{
    private const int PROT_READ = 1, PROT_WRITE = 2;
    private const int MAP_PRIVATE = 0x02, MAP_ANONYMOUS = 0x20, MAP_NORESERVE = 0x4000;
    private const int MADV_DONTNEED = 4;
    public const ulong PageSize = 4096;

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint mmap(nint addr, nuint length, int prot, int flags, int fd, long offset);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int munmap(nint addr, nuint length);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int madvise(nint addr, nuint length, int advice);

    private AnonymousMemory(nint address, ulong length) : base(IntPtr.Zero, true)
    {
        SetHandle(address);
        Length = length;
    }

    public ulong Length { get; }
    public byte* Pointer => (byte*)handle;
    public override bool IsInvalid => handle == IntPtr.Zero;

    public static AnonymousMemory Allocate(ulong length)
    {
        nint p = mmap(0, (nuint)length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == -1)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new IOException($"cannot reserve {length} bytes of memory: {Marshal.GetPInvokeErrorMessage(errno)}");
        }
        return new AnonymousMemory(p, length);
    }

    /// <summary>Sets [offset, offset+length) to zero, giving whole pages back to the kernel.</summary>
    public void Zero(ulong offset, ulong length)
    {
        ulong end = offset + length;
        ulong firstPage = (offset + PageSize - 1) & ~(PageSize - 1);
        ulong lastPage = end & ~(PageSize - 1);
        if (firstPage < lastPage && madvise((nint)(Pointer + firstPage), (nuint)(lastPage - firstPage), MADV_DONTNEED) == 0)
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

    protected override bool ReleaseHandle() => munmap(handle, (nuint)Length) == 0;
}
