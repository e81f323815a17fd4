using BlkTarget.Storage.Interop;
using BlkTarget.Vhost.Protocol;
using BlkTarget.Vhost.Queues;

namespace BlkTarget.Vhost.Memory;

/// <summary>
/// The inflight-tracking area of one frontend connection (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD), mapped from the fd
/// of SET_INFLIGHT_FD: <see cref="NumQueues"/> queue regions of <see cref="InflightLayout.SplitQueueRegionBytes"/>
/// bytes each. Owns its mapping; the session disposes it only once no queue can still use it. The frontend keeps the
/// fd across backend restarts, so whatever it holds is input to validate, never to trust.
/// </summary>
public sealed unsafe class InflightRegion : IDisposable
{
    /// <summary>The most queues an area may describe (vhost-user queue indices are 8 bits).</summary>
    public const int MaxQueues = 256;

    private readonly MappedMemory _mapping;
    private readonly byte* _start;

    private InflightRegion(InflightDescription description, MappedMemory mapping, byte* start)
    {
        Description = description;
        _mapping = mapping;
        _start = start;
    }

    public InflightDescription Description { get; }
    public int NumQueues => Description.NumQueues;
    public uint QueueSize => Description.QueueSize;

    /// <summary>
    /// GET_INFLIGHT_FD: creates a zeroed memfd for <paramref name="numQueues"/> split queues of
    /// <paramref name="queueSize"/> descriptors, each queue region with version 1 and desc_num set, and describes it
    /// (mmap_offset 0, mmap_size = <see cref="InflightLayout.SplitAreaBytes"/>). The caller sends the fd and closes it.
    /// </summary>
    /// <exception cref="ArgumentException">numQueues is 0 or above <see cref="MaxQueues"/>, or queueSize is not a
    /// power of two up to 32768.</exception>
    /// <exception cref="IOException">memfd_create, ftruncate or mmap failed.</exception>
    public static OwnedFd Create(ushort numQueues, ushort queueSize, out InflightDescription description)
    {
        Validate(numQueues, queueSize);
        ulong size = InflightLayout.SplitAreaBytes(numQueues, queueSize);
        var fd = MemFd.Create("blktarget-inflight", (long)size);
        try
        {
            using var mapping = MappedMemory.MapShared(fd.Fd, size);
            for (int q = 0; q < numQueues; q++)
            {
                byte* region = mapping.Pointer + (ulong)q * InflightLayout.SplitQueueRegionBytes(queueSize);
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
    /// ownership of the fd and may close it afterwards). mmap_size must cover num_queues queue regions and the file must
    /// really hold mmap_offset + that many bytes (a mapping past the end of a file faults on access).
    /// </summary>
    /// <exception cref="ArgumentException">the description is inconsistent or the file too small.</exception>
    /// <exception cref="IOException">the fd cannot be examined or mapped.</exception>
    public static InflightRegion Map(InflightDescription description, OwnedFd fd)
    {
        Validate(description.NumQueues, description.QueueSize);
        ulong need = InflightLayout.SplitAreaBytes(description.NumQueues, description.QueueSize);
        if (description.MmapSize < need)
            throw new ArgumentException($"mmap_size {description.MmapSize} is below the {need} bytes of {description.NumQueues} queues of {description.QueueSize}");
        var mapping = MappedMemory.MapSharedRange(fd.Fd, description.MmapOffset, need, out byte* start);
        return new InflightRegion(description, mapping, start);
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
        error = index < 0 || index >= NumQueues ? $"the inflight area has {NumQueues} queues, not queue {index}"
            : queueSize != QueueSize ? $"the inflight area is laid out for queues of {QueueSize}, the ring has {queueSize}"
            : null;
        if (error is not null) return null;
        return new SplitInflightQueue(_start + (ulong)index * InflightLayout.SplitQueueRegionBytes(QueueSize), queueSize);
    }

    public void Dispose() => _mapping.Dispose();
}
