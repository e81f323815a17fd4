using System.Collections.Concurrent;
using BlkTarget.Storage.Interop;

namespace BlkTarget.Storage.Offload;

/// <summary>
/// A thread that does blocking work for reactors, which must never wait for the medium themselves (image metadata
/// updates, BLKDISCARD). A reactor hands a job over through a lock-free queue and an eventfd, and gets the result
/// back as a completion through its own <see cref="IoContext"/> (<see cref="IoContext.PostCompletion"/>), like any
/// io_uring operation. Started on the first job, so a backend that never needs it costs nothing; the queue does
/// not allocate once it has grown to its working size. Subclasses say what a job does.
/// </summary>
internal abstract class OffloadThread<TJob> : IDisposable where TJob : struct
{
    private readonly ConcurrentQueue<TJob> _jobs = new();
    private readonly OwnedFd _wake = EventFd.Create();
    private readonly Thread _thread;
    private int _started;
    private volatile bool _stopping;

    protected OffloadThread(string name) => _thread = new Thread(Run) { IsBackground = true, Name = name };

    /// <summary>Queues a job (any thread). The caller has counted it with <see cref="IoContext.BeginPosted"/>.</summary>
    public void Enqueue(in TJob job)
    {
        _jobs.Enqueue(job);
        StartOnce();
        Wake();
    }

    /// <summary>Starts the thread unless it runs already (work handed over other than by <see cref="Enqueue"/>).</summary>
    protected void StartOnce()
    {
        if (Volatile.Read(ref _started) == 0 && Interlocked.Exchange(ref _started, 1) == 0) _thread.Start();
    }

    /// <summary>Makes the thread look again (any thread).</summary>
    public void Wake() => EventFd.Signal(_wake.Fd);

    /// <summary>Handles one job on the thread (and posts its completion now or later).</summary>
    protected abstract void Handle(in TJob job);

    /// <summary>Work between batches of jobs; returns how long to sleep before looking again (ms; -1 until woken).</summary>
    protected virtual int AfterJobs() => -1;

    /// <summary>Jobs accepted but not finished (keeps the thread from stopping).</summary>
    protected virtual bool HasPendingWork => false;

    private void Run()
    {
        while (true)
        {
            while (_jobs.TryDequeue(out var job)) Handle(job);
            int sleep = AfterJobs();
            if (_stopping && _jobs.IsEmpty && !HasPendingWork) return;
            EventFd.WaitFor(_wake.Fd, _stopping ? 1 : sleep);
        }
    }

    /// <summary>Finishes the jobs already queued (their completions are posted), then stops the thread.</summary>
    public void Dispose()
    {
        _stopping = true;
        if (Interlocked.Exchange(ref _started, 1) != 0)
        {
            Wake();
            if (!_thread.Join(TimeSpan.FromSeconds(30))) OnStuck();
        }
        _wake.Dispose();
    }

    /// <summary>The thread did not finish within 30 s of <see cref="Dispose"/> (a hung device).</summary>
    protected virtual void OnStuck() { }
}
