using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using BlkTarget.Storage.Interop;
using static BlkTarget.Storage.Interop.FileNative;

namespace BlkTarget.Storage.RawFile;

/// <summary>
/// Discards through the BLKDISCARD ioctl on a thread of its own, for kernels whose io_uring refuses
/// BLOCK_URING_CMD_DISCARD (before 6.12): the ioctl returns only when the device is done, which a reactor must never
/// wait for. A reactor hands a discard over (a lock-free queue and an eventfd) and gets the result (0 or -errno) as a
/// completion through its own <see cref="IoContext"/>. The thread starts with the first discard, so kernels that take
/// the io_uring command never have it. One per block device; it only borrows the device's fd (the disk outlives it).
/// </summary>
internal sealed unsafe class BlockDiscardWorker : IDisposable
{
    /// <summary>One discard: <paramref name="Length"/> bytes at byte <paramref name="Offset"/>, completed as operation
    /// <paramref name="Tag"/> of target <paramref name="Target"/> of <paramref name="Io"/>.</summary>
    private readonly record struct Job(IoContext Io, int Target, ulong Tag, ulong Offset, ulong Length);

    private readonly int _fd;
    private readonly ConcurrentQueue<Job> _jobs = new();
    private readonly OwnedFd _wake = Posix.CreateEventFd();
    private readonly Thread _thread;
    private int _started;
    private volatile bool _preferred;
    private volatile bool _stopping;

    public BlockDiscardWorker(int fd, string name)
    {
        _fd = fd;
        _thread = new Thread(Run) { IsBackground = true, Name = $"discard {Path.GetFileName(name)}" };
    }

    /// <summary>
    /// Set once the ioctl discarded a range the io_uring command had refused: this kernel lacks the command, so later
    /// discards come here straight away. (A refusal because the device cannot discard fails the ioctl as well and
    /// sets nothing.)
    /// </summary>
    public bool Preferred
    {
        get => _preferred;
        internal set => _preferred = value;
    }

    /// <summary>Queues a discard of [<paramref name="offset"/>, +<paramref name="length"/>) (bytes, aligned to the
    /// logical block size); any thread, no lock, no allocation once the queue has grown to its working size. The caller
    /// has counted it with <see cref="IoContext.BeginPosted"/>.</summary>
    public void Enqueue(IoContext io, int target, ulong tag, ulong offset, ulong length)
    {
        _jobs.Enqueue(new Job(io, target, tag, offset, length));
        if (Volatile.Read(ref _started) == 0 && Interlocked.Exchange(ref _started, 1) == 0) _thread.Start();
        Posix.SignalEventFd(_wake.Fd);
    }

    private void Run()
    {
        while (true)
        {
            while (_jobs.TryDequeue(out var job)) job.Io.PostCompletion(job.Target, job.Tag, Discard(job.Offset, job.Length));
            if (_stopping && _jobs.IsEmpty) return;
            Posix.WaitEventFd(_wake.Fd, -1);
        }
    }

    private int Discard(ulong offset, ulong length)
    {
        ulong* range = stackalloc ulong[2];
        range[0] = offset;
        range[1] = length;
        if (ioctl(_fd, BLKDISCARD, range) != 0) return -Marshal.GetLastPInvokeError();
        _preferred = true;
        return 0;
    }

    /// <summary>Finishes the discards already queued (their completions are posted), then stops the thread.</summary>
    public void Dispose()
    {
        _stopping = true;
        if (Interlocked.Exchange(ref _started, 1) != 0)
        {
            Posix.SignalEventFd(_wake.Fd);
            _thread.Join();
        }
        _wake.Dispose();
    }
}
