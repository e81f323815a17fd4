namespace BlkTarget.Storage.Ram;

/// <summary>
/// Executes requests against the RAM disk synchronously inside <see cref="Submit"/>: a memory copy is
/// cheaper than any deferral, so the completion is reported before Submit returns.
/// </summary>
internal sealed unsafe class RamDiskChannel(RamDisk disk, IBlockCompletionSink sink) : IBlockChannel
{
    /// <summary>How much of a read <see cref="PrefetchRead"/> asks the cache to load: the first half of a 4 KiB
    /// block. The hardware prefetcher follows a copy once it runs; what it cannot hide is the wait for the first
    /// lines of a random block. Each prefetched line holds a fill buffer until it arrives, so asking for more
    /// stalls on the current copy's misses: 4 KiB RAM reads at QD32 (used entries published every 8th request)
    /// measured 1.57M IOPS with 1 KiB prefetched, 1.78M with 2 KiB, 1.44M with all 4 KiB (medians of 7).</summary>
    private const ulong PrefetchBytes = 2048;

    public int InFlight => 0;

    public bool PrefetchesReads => CacheLines.CanPrefetch;

    public void PrefetchRead(ulong offset, ulong length)
    {
        ulong size = disk.Info.SizeBytes;
        if (offset >= size) return;
        CacheLines.Prefetch(disk.Memory.Pointer + offset, Math.Min(Math.Min(length, PrefetchBytes), size - offset));
    }

    public void Submit(in BlockRequest request)
    {
        var status = RequestValidation.Check(request, disk.Info);
        if (status == BlockStatus.Ok) status = Execute(request);
        sink.Complete(request.Tag, status);
    }

    private BlockStatus Execute(in BlockRequest request)
    {
        byte* medium = disk.Memory.Pointer + request.Offset;
        switch (request.Operation)
        {
            case BlockOperation.Read:
            case BlockOperation.Write:
                if (RequestValidation.IovBytes(request.Iov, request.IovCount) != request.Length) return BlockStatus.IoError;
                bool read = request.Operation == BlockOperation.Read;
                bool streamed = false;
                for (int i = 0; i < request.IovCount; i++)
                {
                    var v = request.Iov[i];
                    if (read) RamCopy.OutOf(v.Base, medium, v.Length);
                    else streamed |= RamCopy.Into(medium, v.Base, v.Length);
                    medium += v.Length;
                }
                // The completion is published right after this returns: the data must be in the disk first.
                if (streamed) RamCopy.Fence();
                return BlockStatus.Ok;
            case BlockOperation.Flush:
                return BlockStatus.Ok;
            case BlockOperation.Discard:
            case BlockOperation.WriteZeroes:
                disk.Memory.Zero(request.Offset, request.Length);
                return BlockStatus.Ok;
            default:
                return BlockStatus.Unsupported;
        }
    }

    public void Dispose() { }
}
