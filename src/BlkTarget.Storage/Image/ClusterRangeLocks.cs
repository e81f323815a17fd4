namespace BlkTarget.Storage.Image;

/// <summary>
/// Orders deallocation of clusters against reads and writes in flight on any channel of an image, the way SPDK's
/// bdev range locks and qcow2's in-flight cluster tracking do. Without it a write still in flight could land
/// after its cluster was unmapped and handed to another virtual cluster, or a read could return another
/// cluster's data.
/// <list type="bullet">
/// <item>A read or write holds its virtual cluster range from submission to completion: <see cref="TryEnter"/>
/// counts it in per-bucket counters of the current <i>epoch</i> (bucket = cluster mod <see cref="Buckets"/>) and
/// fails when the range overlaps a deallocation in progress; the request then waits and tries again.</item>
/// <item>Deallocations first <see cref="Publish"/> their ranges, then <see cref="BeginDrain"/> switches requests to
/// the other epoch's counters and waits until the old epoch's buckets of each range are empty
/// (<see cref="IsDrained"/>). The old epoch only empties: requests that arrive later count in the new one and
/// either stay out (they overlap) or do not matter; so a busy cluster that happens to share a bucket can delay a
/// deallocation by at most the requests already in flight, never starve it. Only then are clusters punched and
/// unmapped. A new drain starts only after the previous one finished (<see cref="EndDrain"/>).</item>
/// </list>
/// Both sides write first and read second with a full fence in between (Interlocked), so each sees the other.
/// Lock-free on the request side: one interlocked add per bucket touched, a volatile read when no deallocation runs.
/// Publish, BeginDrain, IsDrained, EndDrain and Release are called by one thread only (the image's metadata worker).
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
        /// <summary>Buckets before this one were already seen empty in the draining epoch (worker only).</summary>
        public ulong Drained;
    }

    /// <summary>Two epochs' counters, <see cref="Buckets"/> each.</summary>
    private readonly int[] _inFlight = new int[2 * Buckets];
    private readonly ActiveRange[] _active = new ActiveRange[MaxActive];
    private int _activeCount;
    private int _epoch;
    private int _drainingEpoch = -1;

    /// <summary>Counts a request on clusters [<paramref name="first"/>, <paramref name="last"/>]; false (and
    /// nothing counted) when a deallocation of an overlapping range is in progress. <paramref name="epoch"/> goes
    /// back to <see cref="Exit"/>.</summary>
    public bool TryEnter(ulong first, ulong last, out int epoch)
    {
        epoch = Volatile.Read(ref _epoch);
        Count(epoch, first, last, 1);
        if (Volatile.Read(ref _activeCount) == 0 || !Overlaps(first, last)) return true;
        Count(epoch, first, last, -1);
        return false;
    }

    /// <summary>Whether any deallocation is in progress (a request leaving its range then wakes the worker).</summary>
    public bool DeallocationInProgress => Volatile.Read(ref _activeCount) != 0;

    /// <summary>Ends a request counted by <see cref="TryEnter"/>.</summary>
    public void Exit(ulong first, ulong last, int epoch) => Count(epoch, first, last, -1);

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

    /// <summary>Whether a drain is in progress (publish more ranges only for the next one).</summary>
    public bool Draining => _drainingEpoch >= 0;

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

    /// <summary>
    /// Whether a drain may begin: the epoch new requests would move to must hold no request at all. It took no new
    /// ones since the previous drain moved requests away from it, so it empties in bounded time; flipping back while
    /// one of its stragglers still ran would leave that request out of the next drain's count.
    /// </summary>
    public bool CanBeginDrain()
    {
        int offset = (_epoch ^ 1) * Buckets;
        for (int i = 0; i < Buckets; i++)
            if (Volatile.Read(ref _inFlight[offset + i]) != 0) return false;
        return true;
    }

    /// <summary>Moves new requests to the other epoch (only after <see cref="CanBeginDrain"/>); the ranges published
    /// so far drain in the old one.</summary>
    public void BeginDrain()
    {
        int old = _epoch;
        Interlocked.Exchange(ref _epoch, old ^ 1);   // full fence
        _drainingEpoch = old;
    }

    /// <summary>The drain begun by <see cref="BeginDrain"/> is over (every range it covered was released).</summary>
    public void EndDrain() => _drainingEpoch = -1;

    /// <summary>True once every request that overlapped the published range when the drain began has ended.</summary>
    public bool IsDrained(int handle)
    {
        ref ActiveRange a = ref _active[handle];
        int offset = _drainingEpoch * Buckets;
        ulong buckets = Math.Min(a.Last - a.First + 1, Buckets);
        for (; a.Drained < buckets; a.Drained++)
            if (Volatile.Read(ref _inFlight[offset + (int)((a.First + a.Drained) & BucketMask)]) != 0) return false;
        return true;
    }

    /// <summary>Ends a deallocation; requests waiting for its range may enter.</summary>
    public void Release(int handle)
    {
        Volatile.Write(ref _active[handle].Valid, 0);
        Interlocked.Decrement(ref _activeCount);
    }

    private void Count(int epoch, ulong first, ulong last, int delta)
    {
        int offset = epoch * Buckets;
        ulong buckets = Math.Min(last - first + 1, Buckets);
        for (ulong i = 0; i < buckets; i++) Interlocked.Add(ref _inFlight[offset + (int)((first + i) & BucketMask)], delta);
    }
}
