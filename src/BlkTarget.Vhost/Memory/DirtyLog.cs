using BlkTarget.Storage.Interop;
using BlkTarget.Vhost.Protocol;

namespace BlkTarget.Vhost.Memory;

/// <summary>
/// The dirty page log of live migration (vhost-user specification, "Migration"; VHOST_USER_PROTOCOL_F_LOG_SHMFD): a
/// bitmap in memory the frontend shares through SET_LOG_BASE, one bit per <see cref="PageSize"/> (VHOST_LOG_PAGE)
/// page of guest-physical address space from address 0: page n is bit n % 8 of byte n / 8. The backend sets the bit of
/// every page it writes (atomic OR, as the frontend clears bits concurrently while it copies pages), after writing the
/// page and before the used index that hands the write to the guest.
/// <para>
/// Owns its mapping. Marking runs on reactor threads without locks or allocation; the session replaces a log only
/// after every reactor has switched to the new one, and disposes the old one then. Marks beyond the bitmap (the
/// frontend sized it too small) are skipped and counted in <see cref="Unlogged"/>: nothing outside the mapping is
/// ever touched.
/// </para>
/// </summary>
public sealed unsafe class DirtyLog : IDisposable
{
    /// <summary>VHOST_LOG_PAGE: bytes of guest-physical memory per bit.</summary>
    public const ulong PageSize = 0x1000;
    public const int PageShift = 12;
    /// <summary>The largest bitmap accepted: 1 GiB covers 32 TiB of guest-physical address space (QEMU sizes the log
    /// to the highest guest address it knows, rounded up to 8 bytes).</summary>
    public const ulong MaxBytes = 1UL << 30;

    private readonly MappedMemory _mapping;
    private readonly byte* _bitmap;
    private readonly ulong _bytes;
    private long _unlogged;

    private DirtyLog(MappedMemory mapping, byte* bitmap, ulong bytes)
    {
        _mapping = mapping;
        _bitmap = bitmap;
        _bytes = bytes;
    }

    /// <summary>Bytes of bitmap (mmap_size).</summary>
    public ulong Bytes => _bytes;

    /// <summary>Guest-physical bytes the bitmap covers: [0, CoveredBytes).</summary>
    public ulong CoveredBytes => _bytes * 8 * PageSize;

    /// <summary>Marks skipped because the page lay beyond the bitmap (any thread; a recent value).</summary>
    public long Unlogged => Interlocked.Read(ref _unlogged);

    /// <summary>
    /// SET_LOG_BASE: maps mmap_size bytes of <paramref name="fd"/> from mmap_offset (the caller keeps the fd and may
    /// close it afterwards). The file must really hold offset + size bytes (a mapping past its end faults on access).
    /// </summary>
    /// <exception cref="ArgumentException">mmap_size is 0 or above <see cref="MaxBytes"/>, offset + size wraps, or the
    /// file is too short.</exception>
    /// <exception cref="IOException">the fd cannot be examined or mapped.</exception>
    public static DirtyLog Map(LogDescription description, OwnedFd fd)
    {
        if (description.MmapSize is 0 or > MaxBytes)
            throw new ArgumentException($"log mmap_size {description.MmapSize} outside 1..{MaxBytes}");
        var mapping = MappedMemory.MapSharedRange(fd.Fd, description.MmapOffset, description.MmapSize, out byte* start);
        return new DirtyLog(mapping, start, description.MmapSize);
    }

    /// <summary>
    /// Sets the bit of every page [<paramref name="gpa"/>, gpa + <paramref name="length"/>) touches (nothing for length
    /// 0). Each 64-bit word of the bitmap is updated with one locked OR, which is also a full fence: the caller's
    /// earlier stores into guest memory are visible before the bit, and the bit before the caller's later stores (the
    /// used index).
    /// </summary>
    public void MarkGuest(ulong gpa, ulong length)
    {
        if (length == 0) return;
        ulong first = gpa >> PageShift;
        ulong end = gpa + length - 1 < gpa ? ulong.MaxValue : gpa + length - 1;
        ulong last = end >> PageShift;
        ulong pages = _bytes * 8;
        if (first >= pages)
        {
            Interlocked.Increment(ref _unlogged);
            return;
        }
        if (last >= pages)
        {
            Interlocked.Increment(ref _unlogged);
            last = pages - 1;
        }
        // The bitmap may start at any byte (mmap_offset): words are aligned on host addresses. A word can reach below the
        // bitmap's first byte or past its last, never outside the mapping (page-aligned at both ends); those bytes are
        // ORed with zero bits, i.e. left as they are.
        ulong page = first;
        while (page <= last)
        {
            ulong byteAddress = (ulong)_bitmap + (page >> 3);
            ulong* word = (ulong*)(byteAddress & ~7UL);
            int bit = (int)((byteAddress & 7) * 8 + (page & 7));
            // The pages this word covers from here: up to 64 - bit of them.
            ulong count = Math.Min((ulong)(64 - bit), last - page + 1);
            ulong mask = count == 64 ? ulong.MaxValue : ((1UL << (int)count) - 1) << bit;
            Interlocked.Or(ref *word, mask);
            page += count;
        }
    }

    /// <summary>
    /// Marks the pages of a buffer given by its address in this process, inside guest memory <paramref name="memory"/>
    /// (a segment of a walked descriptor chain); the buffer may continue into further regions. Bytes outside every
    /// region are ignored (they are not guest memory).
    /// </summary>
    public void MarkHost(GuestMemory memory, byte* host, ulong length)
    {
        while (length > 0 && memory.TryHostToGuest(host, length, out ulong gpa, out ulong contiguous))
        {
            MarkGuest(gpa, contiguous);
            host += contiguous;
            length -= contiguous;
        }
    }

    /// <summary>True when bit <paramref name="page"/> is set (tests and diagnostics).</summary>
    public bool IsMarked(ulong page) => page < _bytes * 8 && (Volatile.Read(ref _bitmap[page >> 3]) & (1 << (int)(page & 7))) != 0;

    public void Dispose() => _mapping.Dispose();
}
