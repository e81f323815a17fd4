using BlkTarget.Storage.Interop;
using BlkTarget.Vhost.Protocol;
using BlkTarget.Vhost.Queues;

namespace BlkTarget.Vhost.Memory;

/// <summary>
/// The inflight-tracking area of one frontend connection (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD), mapped from the fd
/// of SET_INFLIGHT_FD: <see cref="NumQueues"/> queue regions of <see cref="QueueRegionStride"/> bytes each (room for
/// split and packed layouts when this backend created the area, see <see cref="InflightLayout"/>). Owns its mapping; the session disposes it only once no queue can still use it. The frontend keeps the
/// fd across backend restarts, so whatever it holds is input to validate, never to trust.
/// </summary>
public sealed unsafe class InflightRegion : IDisposable
{
    /// <summary>The most queues an area may describe (vhost-user queue indices are 8 bits).</summary>
    public const int MaxQueues = 256;

    private readonly MappedMemory _mapping;
    private readonly byte* _start;

    private InflightRegion(InflightDescription description, MappedMemory mapping, byte* start, ulong stride)
    {
        Description = description;
        QueueRegionStride = stride;
        _mapping = mapping;
        _start = start;
    }

    public InflightDescription Description { get; }
    public int NumQueues => Description.NumQueues;
    public uint QueueSize => Description.QueueSize;
    /// <summary>Bytes from one queue region to the next.</summary>
    public ulong QueueRegionStride { get; }

    /// <summary>
    /// GET_INFLIGHT_FD: creates a zeroed memfd for <paramref name="numQueues"/> queues of <paramref name="queueSize"/>
    /// descriptors, split or packed (the ring type may not be known yet), each queue region with version 1 and desc_num
    /// set, and describes it (mmap_offset 0, mmap_size = <see cref="InflightLayout.AreaBytes"/>). The caller sends the fd and closes it.
    /// </summary>
    /// <exception cref="ArgumentException">numQueues is 0 or above <see cref="MaxQueues"/>, or queueSize is not a
    /// power of two up to 32768.</exception>
    /// <exception cref="IOException">memfd_create, ftruncate or mmap failed.</exception>
    public static OwnedFd Create(ushort numQueues, ushort queueSize, out InflightDescription description)
    {
        Validate(numQueues, queueSize);
        ulong size = InflightLayout.AreaBytes(numQueues, queueSize);
        var fd = MemFd.Create("blktarget-inflight", (long)size);
        try
        {
            using var mapping = MappedMemory.MapShared(fd.Fd, size);
            for (int q = 0; q < numQueues; q++)
            {
                byte* region = mapping.Pointer + (ulong)q * InflightLayout.QueueRegionBytes(queueSize);
                *(ushort*)(region + InflightLayout.VersionOffset) = InflightLayout.Version;
                *(ushort*)(region + InflightLayout.DescNumOffset) = queueSize;
            }
        }
        catch
        {
            fd.Dispose();
            throw;
        }
        description = new InflightDescription(size, 0, numQueues, queueSize);
        return fd;
    }

    /// <summary>
    /// SET_INFLIGHT_FD: maps the area <paramref name="description"/> places in <paramref name="fd"/> (the caller keeps
    /// ownership of the fd and may close it afterwards). mmap_size must cover num_queues split queue regions and the file
    /// must really hold mmap_offset + mmap_size bytes (a mapping past the end of a file faults on access). An area of at
    /// least num_queues * <see cref="InflightLayout.QueueRegionBytes"/> (what <see cref="Create"/> makes) is laid out
    /// with that stride and serves both ring types; a smaller one has split-sized regions and serves split rings only.
    /// </summary>
    /// <exception cref="ArgumentException">the description is inconsistent or the file too small.</exception>
    /// <exception cref="IOException">the fd cannot be examined or mapped.</exception>
    public static InflightRegion Map(InflightDescription description, OwnedFd fd)
    {
        Validate(description.NumQueues, description.QueueSize);
        ulong need = InflightLayout.SplitAreaBytes(description.NumQueues, description.QueueSize);
        if (description.MmapSize < need)
            throw new ArgumentException($"mmap_size {description.MmapSize} is below the {need} bytes of {description.NumQueues} queues of {description.QueueSize}");
        ulong full = InflightLayout.AreaBytes(description.NumQueues, description.QueueSize);
        bool both = description.MmapSize >= full;
        var mapping = MappedMemory.MapSharedRange(fd.Fd, description.MmapOffset, both ? full : need, out byte* start);
        return new InflightRegion(description, mapping, start,
            both ? InflightLayout.QueueRegionBytes(description.QueueSize) : InflightLayout.SplitQueueRegionBytes(description.QueueSize));
    }

    private static void Validate(int numQueues, uint queueSize)
    {
        if (numQueues is < 1 or > MaxQueues) throw new ArgumentException($"num_queues {numQueues} outside 1..{MaxQueues}");
        if (!SplitRingLayout.IsValidSize(queueSize)) throw new ArgumentException($"queue_size {queueSize} is not a power of two up to {SplitRingLayout.MaxQueueSize}");
    }

    /// <summary>The split-ring tracker for queue <paramref name="index"/> of size <paramref name="queueSize"/>
    /// (SET_VRING_NUM); null with <paramref name="error"/> when the area has no such queue or was laid out for another
    /// queue size.</summary>
    public SplitInflightQueue? SplitQueue(int index, uint queueSize, out string? error)
    {
        byte* region = QueueRegion(index, queueSize, packed: false, out error);
        return region == null ? null : new SplitInflightQueue(region, queueSize);
    }

    /// <summary>The packed-ring tracker for queue <paramref name="index"/>; null with <paramref name="error"/> as for
    /// <see cref="SplitQueue"/>, or when the area's regions are too small for the packed layout.</summary>
    public PackedInflightQueue? PackedQueue(int index, uint queueSize, out string? error)
    {
        byte* region = QueueRegion(index, queueSize, packed: true, out error);
        return region == null ? null : new PackedInflightQueue(region, queueSize);
    }

    private byte* QueueRegion(int index, uint queueSize, bool packed, out string? error)
    {
        error = index < 0 || index >= NumQueues ? $"the inflight area has {NumQueues} queues, not queue {index}"
            : queueSize != QueueSize ? $"the inflight area is laid out for queues of {QueueSize}, the ring has {queueSize}"
            : packed && QueueRegionStride < InflightLayout.PackedQueueRegionBytes(queueSize) ? $"the inflight area has {QueueRegionStride}-byte queue regions, too small for packed rings"
            : null;
        return error is null ? _start + (ulong)index * QueueRegionStride : null;
    }

    public void Dispose() => _mapping.Dispose();
}
