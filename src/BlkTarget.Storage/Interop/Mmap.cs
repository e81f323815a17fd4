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
    /// <summary>A huge page (x86-64 PMD size), in bytes.</summary>
    public const ulong HugePageSize = 2UL << 20;

    private const int PROT_NONE = 0;
    private const int PROT_READ = 1;
    private const int PROT_WRITE = 2;
    private const int PROT_EXEC = 4;
    private const int MAP_SHARED = 0x01, MAP_PRIVATE = 0x02, MAP_ANONYMOUS = 0x20, MAP_NORESERVE = 0x4000;
    private const int MADV_DONTNEED = 4, MADV_REMOVE = 9, MADV_HUGEPAGE = 14, MADV_POPULATE_WRITE = 23;
    private static readonly nint MapFailed = -1;

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint mmap(nint addr, nuint length, int prot, int flags, int fd, long offset);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int munmap(nint addr, nuint length);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int madvise(nint addr, nuint length, int advice);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int mprotect(nint addr, nuint length, int prot);

    /// <summary>How <see cref="Zero"/> gives whole pages back: MADV_DONTNEED zeroes only private anonymous pages
    /// (in a shared file mapping the data stays in the file); a hugetlb memfd needs MADV_REMOVE (a hole punch).</summary>
    private enum Release : byte { None, DontNeed, Remove }

    private readonly Release _release;
    /// <summary>The unit <see cref="Zero"/> gives back: 4 KiB, or 2 MiB for huge pages (giving back part of a huge
    /// page would split it, and the rest would lose what huge pages are for).</summary>
    private readonly ulong _releaseUnit;

    private MappedMemory(nint address, ulong length, Release release, ulong releaseUnit = PageSize) : base(IntPtr.Zero, ownsHandle: true)
    {
        SetHandle(address);
        Length = length;
        _release = release;
        _releaseUnit = releaseUnit;
        Accessible = length;
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
        return new MappedMemory(p, length, Release.None);
    }

    /// <summary>
    /// Maps [<paramref name="offset"/>, offset + <paramref name="length"/>) of an fd a peer sent, shared and read-write,
    /// after checking that the file really holds those bytes (touching a mapping past the end of a file raises
    /// SIGBUS, which would end the process). The offset need not be page-aligned: the mapping starts at the page
    /// below it and <paramref name="start"/> points at the offset.
    /// </summary>
    /// <exception cref="ArgumentException">the range wraps, or the file is shorter than offset + length.</exception>
    /// <exception cref="IOException">fstat or mmap failed (HResult = errno).</exception>
    public static MappedMemory MapSharedRange(int fd, ulong offset, ulong length, out byte* start)
    {
        if (length == 0 || offset > long.MaxValue - length) throw new ArgumentException($"range of {length} bytes at {offset} is invalid");
        var stat = FileNative.StatFd(fd) ?? throw Errno.Exception("statx of a received fd");
        if (stat.Size < offset + length) throw new ArgumentException($"the fd holds {stat.Size} bytes, {offset + length} are needed");
        ulong pageOffset = offset & ~(PageSize - 1);
        var mapping = MapShared(fd, offset - pageOffset + length, (long)pageOffset);
        start = mapping.Pointer + (offset - pageOffset);
        return mapping;
    }

    /// <summary>
    /// Reserves <paramref name="length"/> bytes of zeroed private memory (MAP_NORESERVE): pages are committed on
    /// first write, so a large RAM disk costs nothing until used. With <paramref name="transparentHugePages"/> the
    /// mapping starts on a 2 MiB boundary and is advised MADV_HUGEPAGE, so the kernel backs it with huge pages where
    /// it can (fewer TLB misses on random access); without THP in the kernel it simply stays in 4 KiB pages.
    /// <paramref name="growthLimit"/> (bytes, at least <paramref name="length"/>; 0: no growth) reserves address
    /// space up to that size, inaccessible (PROT_NONE, so it is neither committed nor charged) until
    /// <see cref="Grow"/> opens it: the mapping never moves, so pointers into it stay valid while it grows.
    /// </summary>
    /// <exception cref="IOException">mmap failed (HResult = errno).</exception>
    public static MappedMemory MapAnonymous(ulong length, bool transparentHugePages = false, ulong growthLimit = 0)
    {
        ulong limit = Math.Max(length, growthLimit);
        if (length == 0 || limit > long.MaxValue - HugePageSize) throw new ArgumentOutOfRangeException(nameof(length), "mapping size must be positive");
        int prot = limit > length ? PROT_NONE : PROT_READ | PROT_WRITE;
        // THP: over-reserve by one huge page, then unmap the unaligned head and tail (mmap promises only 4 KiB alignment).
        ulong alignment = transparentHugePages ? HugePageSize : PageSize;
        ulong reserved = limit + (transparentHugePages ? HugePageSize : 0);
        nint raw = mmap(0, (nuint)reserved, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (raw == MapFailed) throw Errno.Exception($"reserving {limit} bytes of memory (mmap)");
        nint aligned = (nint)(((ulong)raw + alignment - 1) & ~(alignment - 1));
        ulong head = (ulong)(aligned - raw);
        if (head > 0) munmap(raw, (nuint)head);
        ulong tail = reserved - head - limit;
        if (tail > 0) munmap(aligned + (nint)limit, (nuint)tail);
        var memory = new MappedMemory(aligned, limit, Release.DontNeed, alignment) { Accessible = limit, _transparentHugePages = transparentHugePages };
        if (limit > length)
        {
            memory.Accessible = 0;
            try
            {
                memory.Grow(length);
            }
            catch
            {
                memory.Dispose();
                throw;
            }
        }
        else if (transparentHugePages)
        {
            // Advice only: a kernel without THP (or with it disabled) keeps 4 KiB pages, which is still correct.
            madvise(aligned, (nuint)length, MADV_HUGEPAGE);
        }
        return memory;
    }

    private bool _transparentHugePages;

    /// <summary>Bytes from the start that may be read and written (the rest of <see cref="Length"/> is reserved for
    /// <see cref="Grow"/>). Equals <see cref="Length"/> for mappings made without a growth limit.</summary>
    public ulong Accessible { get; private set; }

    /// <summary>
    /// Opens the reserved address space up to <paramref name="newAccessible"/> bytes (at most <see cref="Length"/>)
    /// for reading and writing; the new bytes read as zeros. Callers serialise growth; readers of the old part are
    /// unaffected.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">beyond the reservation, or smaller than now.</exception>
    /// <exception cref="IOException">mprotect failed (HResult = errno; ENOMEM: the memory cannot be committed).</exception>
    public void Grow(ulong newAccessible)
    {
        if (newAccessible > Length || newAccessible < Accessible)
            throw new ArgumentOutOfRangeException(nameof(newAccessible), $"a mapping of {Length} bytes with {Accessible} open cannot open {newAccessible}");
        ulong from = Accessible & ~(PageSize - 1);
        ulong to = (newAccessible + PageSize - 1) & ~(PageSize - 1);
        if (to > from)
        {
            if (mprotect((nint)(Pointer + from), (nuint)(to - from), PROT_READ | PROT_WRITE) != 0)
                throw Errno.Exception($"opening {to - from} bytes of reserved memory (mprotect)");
            if (_transparentHugePages) madvise((nint)(Pointer + from), (nuint)(to - from), MADV_HUGEPAGE);
        }
        Accessible = newAccessible;
    }

    /// <summary>
    /// Maps one private page holding <paramref name="code"/> (machine code, at its start), then makes the page
    /// read-only and executable: it is never writable and executable at once. For the few instructions .NET has no
    /// intrinsic for (see <see cref="CacheLines.Demote"/>); call it through an unmanaged function pointer.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">code is empty or longer than a page.</exception>
    /// <exception cref="IOException">mmap or mprotect failed (HResult = errno; e.g. EACCES where policy forbids
    /// executable anonymous memory, as SELinux's deny_execmem does).</exception>
    public static MappedMemory MapCode(ReadOnlySpan<byte> code)
    {
        if (code.IsEmpty || (ulong)code.Length > PageSize) throw new ArgumentOutOfRangeException(nameof(code), "code must be 1 to 4096 bytes");
        var memory = MapAnonymous(PageSize);
        try
        {
            code.CopyTo(new Span<byte>(memory.Pointer, code.Length));
            if (mprotect(memory.handle, (nuint)PageSize, PROT_READ | PROT_EXEC) != 0) throw Errno.Exception("making a code page executable (mprotect)");
            return memory;
        }
        catch
        {
            memory.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Maps <paramref name="length"/> bytes (rounded up to 2 MiB: <see cref="Length"/>) of hugetlb memory: a MFD_HUGETLB memfd, mapped
    /// shared, so the pages come from the pool reserved in /proc/sys/vm/nr_hugepages and are reserved now, at map
    /// time (a later fault never fails).
    /// </summary>
    /// <exception cref="IOException">not enough free huge pages (one line saying how many are needed and free), or
    /// another memfd/mmap error.</exception>
    public static MappedMemory MapHugetlb(ulong length, string name)
    {
        if (length == 0 || length > long.MaxValue - HugePageSize) throw new ArgumentOutOfRangeException(nameof(length), "mapping size must be positive");
        ulong size = (length + HugePageSize - 1) & ~(HugePageSize - 1);
        using var fd = MemFd.Create(name, (long)size, hugePages: true);
        nint p = mmap(0, (nuint)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.Fd, 0);
        if (p == MapFailed)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (errno == 12)   // ENOMEM: the huge page pool cannot cover the reservation
                throw new IOException($"{size / HugePageSize} huge pages of 2 MiB are needed for {name}, but only {FreeHugePages()} are free (reserve more: echo N > /proc/sys/vm/nr_hugepages)");
            throw Errno.Exception($"mmap of {size} bytes of hugetlb memory");
        }
        return new MappedMemory(p, size, Release.Remove, HugePageSize);
    }

    /// <summary>HugePages_Free from /proc/meminfo (0 when unreadable).</summary>
    public static ulong FreeHugePages()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/meminfo"))
                if (line.StartsWith("HugePages_Free:", StringComparison.Ordinal) && ulong.TryParse(line.AsSpan(15).Trim(), out ulong free)) return free;
        }
        catch (IOException) { }
        return 0;
    }

    /// <summary>
    /// Faults in bytes [offset, offset+length) for writing without changing their contents (MADV_POPULATE_WRITE,
    /// Linux 5.14+): the page allocation (and zeroing) a first write would cost happens now. False when the kernel
    /// refused (too old, or out of memory). Must lie within <see cref="Accessible"/>.
    /// </summary>
    public bool PopulateWrite(ulong offset, ulong length)
    {
        if (offset > Accessible || length > Accessible - offset) throw new ArgumentOutOfRangeException(nameof(length));
        return length == 0 || madvise((nint)(Pointer + offset), (nuint)length, MADV_POPULATE_WRITE) == 0;
    }

    /// <summary>
    /// Sets bytes [offset, offset+length) to zero. In an anonymous or hugetlb mapping whole pages (whole huge pages
    /// for huge-page mappings) are given back to the kernel (MADV_DONTNEED / MADV_REMOVE: they read as zeros
    /// again); partial pages, and shared file mappings, are cleared.
    /// </summary>
    public void Zero(ulong offset, ulong length)
    {
        ulong end = offset + length;
        ulong unit = _releaseUnit;
        ulong firstPage = (offset + unit - 1) & ~(unit - 1);
        ulong lastPage = end & ~(unit - 1);
        int advice = _release == Release.Remove ? MADV_REMOVE : MADV_DONTNEED;
        if (_release != Release.None && firstPage < lastPage && madvise((nint)(Pointer + firstPage), (nuint)(lastPage - firstPage), advice) == 0)
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
