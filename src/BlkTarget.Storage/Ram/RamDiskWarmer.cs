using BlkTarget.Storage.Interop;

namespace BlkTarget.Storage.Ram;

/// <summary>
/// Faults a transparent-huge-page RAM disk's memory in ahead of the guest, on a background thread, so the first
/// write into each 2 MiB region does not pay for the kernel zeroing (and maybe compacting for) a huge page inside
/// the request: measured on these machines, a fresh THP RAM disk served its first second of 4 KiB random writes at
/// about 700 IOPS instead of about 200k. It uses MADV_POPULATE_WRITE (Linux 5.14+), which allocates pages without
/// changing a byte, so it races harmlessly with guest writes and discards (a discarded range is simply faulted in
/// again, zeros). Works in 64 MiB steps and stops at once on <see cref="Dispose"/>, which waits for the step in
/// progress, so the mapping is never unmapped under it.
/// </summary>
internal sealed class RamDiskWarmer : IDisposable
{
    private const ulong Step = 64UL << 20;

    private readonly MappedMemory _memory;
    private readonly Thread _thread;
    private readonly object _gate = new();
    private ulong _next;
    private ulong _end;
    private bool _stopping;

    public RamDiskWarmer(MappedMemory memory, ulong length, string name)
    {
        _memory = memory;
        _end = length;
        _thread = new Thread(Run) { IsBackground = true, Name = $"ram-warm {name}", Priority = ThreadPriority.Lowest };
        _thread.Start();
    }

    /// <summary>Bytes faulted in so far (for tests and logs).</summary>
    public ulong Warmed
    {
        get { lock (_gate) return _next; }
    }

    /// <summary>True once everything up to the disk's current size is faulted in, or the kernel cannot do it.</summary>
    public bool Done
    {
        get { lock (_gate) return _next >= _end || _unsupported; }
    }

    private bool _unsupported;

    /// <summary>The disk grew: warm the new space too.</summary>
    public void Extend(ulong newLength)
    {
        lock (_gate)
        {
            bool idle = _next >= _end;
            _end = Math.Max(_end, newLength);
            if (idle) Monitor.PulseAll(_gate);
        }
    }

    private void Run()
    {
        while (true)
        {
            ulong from, length;
            lock (_gate)
            {
                while (!_stopping && (_next >= _end || _unsupported)) Monitor.Wait(_gate);
                if (_stopping) return;
                from = _next;
                length = Math.Min(Step, _end - _next);
            }
            bool ok = _memory.PopulateWrite(from, length);
            lock (_gate)
            {
                if (!ok) _unsupported = true;   // an older kernel (EINVAL) or no memory (ENOMEM): the guest faults pages in itself
                else _next = from + length;
            }
        }
    }

    public void Dispose()
    {
        lock (_gate)
        {
            _stopping = true;
            Monitor.PulseAll(_gate);
        }
        _thread.Join();
    }
}
