using System.Collections.Concurrent;
using BlkTarget.Storage.Offload;
using BlkTarget.Storage.Interop;
using Microsoft.Extensions.Logging;

namespace BlkTarget.Storage.Image;

/// <summary>What a channel asks the metadata worker to do.</summary>
internal enum MetadataJobKind : byte
{
    /// <summary>Allocate every unallocated cluster of [First, First + Count) (a write needs them).</summary>
    Allocate,
    /// <summary>Deallocate virtual bytes [First, First + Count): DISCARD / WRITE_ZEROES.</summary>
    Deallocate,
}

/// <summary>One request to the metadata worker; the result (0 or -errno) goes back to <paramref name="Io"/> as a
/// completion of operation <paramref name="Tag"/> of target <paramref name="Target"/>.</summary>
internal readonly record struct MetadataJob(MetadataJobKind Kind, IoContext Io, int Target, ulong Tag, ulong First, ulong Count, bool Durable);

/// <summary>
/// The one thread that changes an image's metadata while it is served: cluster allocation (growing the file,
/// punching a reused cluster, writing map blocks) and deallocation (punching, unmapping). Reactors never block on
/// this work: they hand a job over (a lock-free queue and an eventfd) and get the result as a completion through
/// their own <see cref="IoContext"/>. Because one thread does all of it, allocation, deallocation and the free
/// lists need no lock. A deallocation first waits, without blocking other jobs, until no read or write on its
/// clusters is in flight (<see cref="ClusterRangeLocks"/>). A growth of the image (<see cref="Grow"/>) runs here
/// too, batch by batch between other jobs: each batch of clusters it moves waits for its ranges the same way.
/// </summary>
internal sealed class ImageMetadataWorker : OffloadThread<MetadataJob>
{
    private readonly ImageFile _image;
    private readonly ClusterRangeLocks _ranges;
    private readonly Action _rangesReleased;
    private readonly ILogger _log;
    // Worker thread only:
    private readonly List<(MetadataJob Job, int Handle)> _draining = [];
    /// <summary>Allocations taken since the last batch: done together in <see cref="AllocateBatch"/>.</summary>
    private readonly List<MetadataJob> _allocations = [];
    private (ulong First, ulong Count)[] _runs = new (ulong, ulong)[64];
    private const int MaxAllocationBatch = 256;
    private readonly Queue<MetadataJob> _waitingForRange = new();
    private readonly ConcurrentQueue<GrowthRequest> _growthRequests = new();
    private GrowthRequest? _growing;
    private ImageGrowth? _growth;
    /// <summary>Range handles of the growth batch being drained or moved (empty: no batch out).</summary>
    private readonly List<int> _batchHandles = [];

    /// <summary>A growth asked for by <see cref="Grow"/>, finished (or failed) on the worker.</summary>
    private sealed class GrowthRequest(ulong newVirtualSize)
    {
        public ulong NewVirtualSize { get; } = newVirtualSize;
        public TaskCompletionSource Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    /// <param name="rangesReleased">Called on the worker after a deallocation ended: requests parked on its range may go on.</param>
    public ImageMetadataWorker(ImageFile image, ClusterRangeLocks ranges, Action rangesReleased, ILogger log) : base("image-metadata")
    {
        _image = image;
        _ranges = ranges;
        _rangesReleased = rangesReleased;
        _log = log;
    }

    protected override void Handle(in MetadataJob job) => Accept(job);

    /// <summary>While a deallocation waits for requests to leave its range, look again at least every millisecond
    /// (requests also wake us when they leave a range).</summary>
    protected override int AfterJobs()
    {
        // Allocations first, as when each ran on arrival: a deallocation that drained meanwhile still comes after.
        if (_allocations.Count > 0) AllocateBatch();
        if (_growing is null && _growthRequests.TryDequeue(out var request)) BeginGrowth(request);
        FinishDrainedWork();
        return _draining.Count > 0 || _waitingForRange.Count > 0 || _growing is not null ? 1 : -1;
    }

    protected override bool HasPendingWork => _draining.Count > 0 || _waitingForRange.Count > 0 || _growing is not null || !_growthRequests.IsEmpty;

    /// <summary>
    /// Grows the image to <paramref name="newVirtualSize"/> bytes (<see cref="ImageGrowth"/>) on the worker, between
    /// the reactors' jobs, and returns once the new header is durable. Blocks the calling (management) thread.
    /// </summary>
    /// <exception cref="ArgumentException">not a size the image can grow to.</exception>
    /// <exception cref="IOException">the file could not be changed (the image keeps its old size).</exception>
    public void Grow(ulong newVirtualSize)
    {
        var request = new GrowthRequest(newVirtualSize);
        _growthRequests.Enqueue(request);
        StartOnce();
        Wake();
        request.Done.Task.GetAwaiter().GetResult();
    }

    private void BeginGrowth(GrowthRequest request)
    {
        try
        {
            _growth = ImageGrowth.Begin(_image, request.NewVirtualSize);
            _growing = request;
            _log.LogInformation("{Path}: growing to {Size} bytes, {Count} clusters to move out of the map's way", _image.Path, request.NewVirtualSize, _growth.ToMove);
        }
        catch (Exception e)
        {
            request.Done.SetException(e);
        }
    }

    /// <summary>A growth batch is wanted when its clusters are not yet published.</summary>
    private bool WantsGrowthBatch => _growth is { HasMoves: true } && _batchHandles.Count == 0;

    /// <summary>Publishes the next batch's ranges (as many runs as range slots are free).</summary>
    private void PublishGrowthBatch()
    {
        foreach (var (first, last) in _growth!.NextBatch(ClusterRangeLocks.MaxActive - _draining.Count))
        {
            int handle = _ranges.Publish(first, last);
            if (handle < 0) throw new InvalidOperationException("no range slot for a growth batch");   // counted above
            _batchHandles.Add(handle);
        }
    }

    /// <summary>Moves the drained batch; when nothing is left to move, commits the growth.</summary>
    private bool AdvanceGrowth()
    {
        bool released = false;
        try
        {
            if (_batchHandles.Count > 0)
            {
                foreach (int handle in _batchHandles)
                    if (!_ranges.IsDrained(handle)) return false;
                try
                {
                    _growth!.RelocateBatch();
                }
                finally
                {
                    foreach (int handle in _batchHandles) _ranges.Release(handle);
                    _batchHandles.Clear();
                    released = true;
                }
            }
            if (_growth!.HasMoves) return released;
            _growth.Commit();
            _log.LogInformation("{Path}: grown to {Size} bytes ({Moved} clusters moved)", _image.Path, _growth.Grown.VirtualSize, _growth.Moved);
            EndGrowth(null);
        }
        catch (Exception e)
        {
            _log.LogError("{Path}: growing to {Size} bytes failed: {Error}", _image.Path, _growing!.NewVirtualSize, e.Message);
            EndGrowth(e);
        }
        return released;
    }

    private void EndGrowth(Exception? error)
    {
        var request = _growing!;
        _growth!.Dispose();
        _growth = null;
        _growing = null;
        if (error is null) request.Done.SetResult();
        else request.Done.SetException(error is IOException or ArgumentException ? error : new IOException(error.Message, error));
    }

    protected override void OnStuck() => _log.LogError("{Path}: the metadata worker did not stop", _image.Path);

    private void Accept(in MetadataJob job)
    {
        if (job.Kind == MetadataJobKind.Allocate)
        {
            _allocations.Add(job);   // completed with the others that queued up (AfterJobs)
            if (_allocations.Count >= MaxAllocationBatch) AllocateBatch();   // a steady stream still gets answers
            return;
        }
        if (job.Count == 0)
        {
            Complete(job, 0);
            return;
        }
        _waitingForRange.Enqueue(job);   // published with the next drain (AfterJobs)
    }

    /// <summary>
    /// Runs the range drains: publishes the waiting deallocation ranges (as many as fit) and the next growth batch,
    /// begins a drain, finishes every deallocation and growth batch whose ranges have drained, and when a drain is
    /// over starts the next one.
    /// </summary>
    private void FinishDrainedWork()
    {
        bool released = false;
        while (true)
        {
            if (!_ranges.Draining && (_waitingForRange.Count > 0 || WantsGrowthBatch) && _ranges.CanBeginDrain())
            {
                int shift = _image.Header.ClusterShift;
                while (_waitingForRange.TryPeek(out var next))
                {
                    int handle = _ranges.Publish(next.First >> shift, (next.First + next.Count - 1) >> shift);
                    if (handle < 0) break;
                    _draining.Add((_waitingForRange.Dequeue(), handle));
                }
                if (WantsGrowthBatch && _draining.Count < ClusterRangeLocks.MaxActive) PublishGrowthBatch();
                _ranges.BeginDrain();
            }
            for (int i = 0; i < _draining.Count; i++)
            {
                var (job, handle) = _draining[i];
                if (!_ranges.IsDrained(handle)) continue;
                int result = Execute(job);
                _ranges.Release(handle);
                _draining.RemoveAt(i--);
                released = true;
                Complete(job, result);
            }
            if (_growth is not null && (_batchHandles.Count > 0 || !_growth.HasMoves)) released |= AdvanceGrowth();
            if (!_ranges.Draining || _draining.Count > 0 || _batchHandles.Count > 0) break;
            _ranges.EndDrain();
            if ((_waitingForRange.Count == 0 && !WantsGrowthBatch) || !_ranges.CanBeginDrain()) break;
        }
        if (released) _rangesReleased();
    }

    /// <summary>Test seam: runs on the worker before each job (a test blocks it to prove reactors never wait for it).</summary>
    internal Action? BeforeJob { get; set; }

    /// <summary>
    /// Every allocation that queued up since the last batch, with one write per run of changed map blocks
    /// (<see cref="ImageFile.AllocateRuns"/>) and at most one fsync for those that must be durable (FUA). Each
    /// request's data write follows its completion, so rule 1 (map before data) holds for every one of them. When
    /// the batch fails it is undone and each allocation runs alone, so one failure fails only its own request.
    /// </summary>
    private void AllocateBatch()
    {
        if (_runs.Length < _allocations.Count) _runs = new (ulong, ulong)[Math.Max(_allocations.Count, _runs.Length * 2)];
        bool durable = false;
        for (int i = 0; i < _allocations.Count; i++)
        {
            BeforeJob?.Invoke();
            _runs[i] = (_allocations[i].First, _allocations[i].Count);
            durable |= _allocations[i].Durable;
        }
        int result;
        try
        {
            _image.AllocateRuns(_runs.AsSpan(0, _allocations.Count));
            if (durable) _image.Sync();
            result = 0;
        }
        catch (Exception e) when (_allocations.Count > 1)
        {
            _log.LogDebug("{Path}: a batch of {Count} allocations failed ({Error}); running them one by one", _image.Path, _allocations.Count, e.Message);
            foreach (var job in _allocations) Complete(job, Execute(job, invokeSeam: false));
            _allocations.Clear();
            return;
        }
        catch (Exception e)
        {
            result = Failed(_allocations[0], e);
        }
        foreach (var job in _allocations) Complete(job, result);
        _allocations.Clear();
    }

    private int Execute(in MetadataJob job, bool invokeSeam = true)
    {
        if (invokeSeam) BeforeJob?.Invoke();
        try
        {
            if (job.Kind == MetadataJobKind.Allocate) _image.AllocateRun(job.First, job.Count);
            else _image.DeallocateBytes(job.First, job.Count);
            if (job.Durable) _image.Sync();
            return 0;
        }
        catch (Exception e)
        {
            return Failed(job, e);
        }
    }

    /// <summary>Logs a failed job; its result. Catches anything: an exception escaping this thread would end the
    /// process and every other device with it.</summary>
    private int Failed(in MetadataJob job, Exception e)
    {
        if (e is IOException) _log.LogError("{Path}: {Kind} of {Count} at {First} failed: {Error}", _image.Path, job.Kind, job.Count, job.First, e.Message);
        else _log.LogError(e, "{Path}: {Kind} of {Count} at {First} failed unexpectedly", _image.Path, job.Kind, job.Count, job.First);
        return -Errno.EIO;
    }

    private static void Complete(in MetadataJob job, int result) => job.Io.PostCompletion(job.Target, job.Tag, result);
}
