using BlkTarget.Storage.Interop;
using BlkTarget.Vhost.Memory;
using BlkTarget.Vhost.Protocol;

namespace BlkTarget.Vhost.Frontend;

/// <summary>
/// The dirty page log as the frontend holds it during a live migration (QEMU's vhost_log): a memfd of
/// <see cref="Bytes"/> bytes, mapped, shared with the backend through SET_LOG_BASE. One bit per 4 KiB page of
/// guest-physical memory from address 0 (page n = bit n % 8 of byte n / 8). Tests read and clear it the way QEMU's
/// log sync does.
/// </summary>
public sealed unsafe class DirtyLogArea : IDisposable
{
    private readonly OwnedFd _fd;
    private readonly MappedMemory _mapping;

    /// <summary>A zeroed log covering guest-physical addresses [0, <paramref name="coveredBytes"/>), rounded up to whole
    /// 64-bit words as QEMU sizes it.</summary>
    /// <exception cref="IOException">memfd_create, ftruncate or mmap failed.</exception>
    public DirtyLogArea(ulong coveredBytes)
    {
        ulong pages = (coveredBytes + DirtyLog.PageSize - 1) / DirtyLog.PageSize;
        Bytes = Math.Max(8, (pages + 63) / 64 * 8);
        _fd = MemFd.Create("blktarget-dirty-log", (long)Bytes);
        try
        {
            _mapping = MappedMemory.MapShared(_fd.Fd, Bytes);
        }
        catch
        {
            _fd.Dispose();
            throw;
        }
    }

    /// <summary>Bytes of bitmap: SET_LOG_BASE's mmap_size (mmap_offset is 0).</summary>
    public ulong Bytes { get; }
    public int Fd => _fd.Fd;
    public LogDescription Description => new(Bytes, 0);

    public bool IsMarked(ulong page) => page < Bytes * 8 && (Volatile.Read(ref _mapping.Pointer[page >> 3]) & (1 << (int)(page & 7))) != 0;

    /// <summary>Every marked page, ascending.</summary>
    public IReadOnlyList<ulong> MarkedPages()
    {
        var pages = new List<ulong>();
        for (ulong i = 0; i < Bytes; i++)
        {
            byte b = Volatile.Read(ref _mapping.Pointer[i]);
            for (int bit = 0; bit < 8; bit++)
                if ((b & (1 << bit)) != 0) pages.Add(i * 8 + (ulong)bit);
        }
        return pages;
    }

    /// <summary>Takes and clears every mark (QEMU's log sync exchanges each word with 0).</summary>
    public IReadOnlyList<ulong> TakeMarkedPages()
    {
        var pages = new List<ulong>();
        ulong* words = (ulong*)_mapping.Pointer;
        for (ulong w = 0; w < Bytes / 8; w++)
        {
            ulong bits = Interlocked.Exchange(ref words[w], 0);
            for (int bit = 0; bits != 0 && bit < 64; bit++)
                if ((bits & (1UL << bit)) != 0) pages.Add(w * 64 + (ulong)bit);
        }
        return pages;
    }

    public void Dispose()
    {
        _mapping.Dispose();
        _fd.Dispose();
    }
}
