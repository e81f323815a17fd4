namespace BlkTarget.Storage.Image;

/// <summary>
/// Orders deallocation of clusters against reads and writes in flight on any channel of an image, the way SPDK's
/// bdev range locks and qcow2's in-flight cluster tracking do. Without it a write still in flight could land
/// after its cluster was unmapped and handed to another virtual cluster, or a read could return another
/// cluster's data.
/// <list type="bullet">
/// <item>A read or write holds its virtual cluster range from submission to completion: <see cref="TryEnter"/>
/// counts it in per-bucket counters (bucket = cluster mod <see cref="Buckets"/>) and fails when the range overlaps
/// a deallocation in progress; the request then waits and tries again.</item>
/// <item>A deallocation first <see cref="Publish"/>es its range, then waits until every bucket of the range was
/// seen empty once (<see cref="IsDrained"/>): requests counted before the publication have then all finished, and
/// later ones saw the range and stayed out. Only then are clusters punched and unmapped.</item>
/// </list>
/// Both sides write first and read second with a full fence in between (Interlocked), so each sees the other.
/// Lock-free on the request side: one interlocked add per bucket touched, a volatile read when no deallocation runs.
/// Publish, IsDrained and Release are called by one thread only (the image's metadata worker).
/// </summary>
internal sealed class ClusterRangeLocks
{
    public const int Buckets = 4096;
    public const int MaxActive = 32;
    private const ulong BucketMask = Buckets - 1;

    private struct ActiveRange
    {
        public ulong First;
        public ulong Last;
        public int Valid;
        /// <summary>Buckets before this one were already seen empty (worker only).</summary>
        public ulong Drained;
    }

    private readonly int[] _inFlight = new int[Buckets];
    private readonly ActiveRange[] _active = new ActiveRange[MaxActive];
    private int _activeCount;

    /// <summary>Counts a request on clusters [<paramref name="first"/>, <paramref name="last"/>]; false (and
    /// nothing counted) when a deallocation of an overlapping range is in progress.</summary>
    public bool TryEnter(ulong first, ulong last)
    {
        Count(first, last, 1);
        if (Volatile.Read(ref _activeCount) == 0 || !Overlaps(first, last)) return true;
        Count(first, last, -1);
        return false;
    }

    /// <summary>Whether any deallocation is in progress (a request leaving its range then wakes the worker).</summary>
    public bool DeallocationInProgress => Volatile.Read(ref _activeCount) != 0;

    /// <summary>Ends a request counted by <see cref="TryEnter"/>.</summary>
    public void Exit(ulong first, ulong last) => Count(first, last, -1);

    /// <summary>Whether a deallocation in progress overlaps clusters [first, last].</summary>
    public bool Overlaps(ulong first, ulong last)
    {
        for (int i = 0; i < MaxActive; i++)
        {
            ref ActiveRange a = ref _active[i];
            if (Volatile.Read(ref a.Valid) != 0 && first <= a.Last && a.First <= last) return true;
        }
        return false;
    }

    /// <summary>Announces a deallocation of clusters [first, last]; returns its handle, or -1 when
    /// <see cref="MaxActive"/> are already in progress (try again after one is released).</summary>
    public int Publish(ulong first, ulong last)
    {
        for (int i = 0; i < MaxActive; i++)
        {
            ref ActiveRange a = ref _active[i];
            if (a.Valid != 0) continue;
            a.First = first;
            a.Last = last;
            a.Drained = 0;
            Volatile.Write(ref a.Valid, 1);
            Interlocked.Increment(ref _activeCount);   // full fence: the range is visible before we read counters
            return i;
        }
        return -1;
    }

    /// <summary>True once every request that overlapped the published range when it was published has ended.</summary>
    public bool IsDrained(int handle)
    {
        ref ActiveRange a = ref _active[handle];
        ulong buckets = Math.Min(a.Last - a.First + 1, Buckets);
        for (; a.Drained < buckets; a.Drained++)
            if (Volatile.Read(ref _inFlight[(a.First + a.Drained) & BucketMask]) != 0) return false;
        return true;
    }

    /// <summary>Ends a deallocation; requests waiting for its range may enter.</summary>
    public void Release(int handle)
    {
        Volatile.Write(ref _active[handle].Valid, 0);
        Interlocked.Decrement(ref _activeCount);
    }

    private void Count(ulong first, ulong last, int delta)
    {
        ulong buckets = Math.Min(last - first + 1, Buckets);
        for (ulong i = 0; i < buckets; i++) Interlocked.Add(ref _inFlight[(first + i) & BucketMask], delta);
    }
}
