using BlkTarget.Storage.Interop;
using BlkTarget.Vhost.Protocol;

namespace BlkTarget.Vhost.Frontend;

/// <summary>
/// The inflight-tracking area as the frontend holds it (what QEMU keeps in its device across backend restarts): the
/// fd GET_INFLIGHT_FD returned, its description, and a mapping for tests to inspect. It outlives connections: take it
/// from one <see cref="VhostUserFrontend"/> and give it to the next one after the backend restarted.
/// </summary>
public sealed unsafe class InflightArea : IDisposable
{
    private readonly OwnedFd _fd;
    private readonly MappedMemory _mapping;

    /// <summary>Takes ownership of <paramref name="fd"/> and maps mmap_size bytes from mmap_offset, as QEMU does.</summary>
    /// <exception cref="ArgumentException">mmap_size is 0 or the file is shorter than the description says.</exception>
    /// <exception cref="IOException">the fd cannot be mapped.</exception>
    public InflightArea(OwnedFd fd, InflightDescription description)
    {
        try
        {
            _mapping = MappedMemory.MapSharedRange(fd.Fd, description.MmapOffset, description.MmapSize, out byte* start);
            Pointer = start;
        }
        catch
        {
            fd.Dispose();
            throw;
        }
        _fd = fd;
        Description = description;
    }

    public InflightDescription Description { get; }
    public int Fd => _fd.Fd;
    /// <summary>The area's first byte (mmap_offset into the fd).</summary>
    public byte* Pointer { get; }

    public void Dispose()
    {
        _mapping.Dispose();
        _fd.Dispose();
    }
}
