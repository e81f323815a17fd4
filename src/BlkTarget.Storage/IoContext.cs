using System.Collections.Concurrent;
using BlkTarget.Storage.Interop;
using BlkTarget.Storage.IoUring;
using Microsoft.Extensions.Logging;

namespace BlkTarget.Storage;

/// <summary>What a channel registered with an <see cref="IoContext"/> hears back, always on the reactor thread.</summary>
internal interface IIoCompletionTarget
{
    /// <summary>One operation finished: an io_uring CQE's result (bytes or -errno), or the result a helper thread
    /// posted with <see cref="IoContext.PostCompletion"/>.</summary>
    void OnIoCompleted(ulong tag, int result);

    /// <summary>An operation that found no free submission entry (see <see cref="IoContext.WaitForSqe"/>) may try again.</summary>
    void OnSqeAvailable(ulong tag);

    /// <summary>Called on every <see cref="IoContext.Poll"/> while the target asked for it with
    /// <see cref="IoContext.RequestPolling"/>: work it deferred (requests waiting for a cluster range).</summary>
    int OnPoll();

    /// <summary>One of the calls above threw. The target must stop completing requests (its state is unknown)
    /// but go on accepting its outstanding completions so that nothing the kernel still holds is released.</summary>
    void OnFault(Exception error);
}

/// <summary>Where the owner of an <see cref="IoContext"/> sleeps (the reactor's epoll set): it adds the extra fds that
/// channels register with <see cref="IoContext.AddWakeSource"/>, and drains each (as an eventfd) when it wakes on it.</summary>
public interface IWakeSourceHost
{
    void AddWakeSource(int fd);
    void RemoveWakeSource(int fd);
}

/// <summary>
/// The I/O engine of one reactor thread: its io_uring (created on first use, on that thread, so that
/// SINGLE_ISSUER/DEFER_TASKRUN hold), the registered-file table, and the routing of completions back to the
/// channels that submitted them. The reactor calls <see cref="Poll"/> once per loop iteration (one
/// io_uring_enter for all submissions of the iteration) and sleeps on <see cref="WakeFd"/> with its kicks.
/// Backends that complete inline (RAM disk) never touch it.
/// <para>
/// Guarantees a channel can build on: an operation never fails for lack of a submission entry (it waits for one,
/// <see cref="WaitForSqe"/>); no more operations are in the kernel than the completion ring holds, so no
/// completion is ever dropped (and a CQ overflow the kernel reports is reaped); a channel's registration (its
/// index in the user_data) is only given to another channel once nothing of the first is outstanding, so a stale
/// completion never reaches a later channel; an exception from one channel's handler faults that channel only.
/// Helper threads complete work through the same path with <see cref="PostCompletion"/>.
/// </para>
/// </summary>
public sealed unsafe class IoContext : IDisposable
{
    private const int TagBits = 40;
    private const ulong TagMask = (1UL << TagBits) - 1;
    public const int MaxRegisteredFiles = 64;

    /// <summary>A completion posted by a helper thread.</summary>
    private readonly record struct Posted(int Target, ulong Tag, int Result);

    private readonly OwnedFd _wake = EventFd.Create();
    private readonly uint _entries;
    private readonly ILogger? _log;
    private readonly List<IIoCompletionTarget?> _targets = [];
    private readonly List<int> _outstanding = [];
    private readonly List<IIoCompletionTarget> _polled = [];
    private readonly Queue<ulong> _sqeWaiters = new();
    private readonly ConcurrentQueue<Posted> _posted = new();
    private readonly bool[] _fileSlots = new bool[MaxRegisteredFiles];
    private readonly Dictionary<int, int> _wakeSources = [];
    private IWakeSourceHost? _wakeHost;
    private IoUring.IoUring? _ring;
    private bool _filesRegistered;
    private int _inFlight;
    private int _inKernel;
    private volatile bool _disposed;

    /// <param name="entries">Submission ring size; the completion ring is twice that.</param>
    /// <param name="log">Where faults of channels are reported; null for none.</param>
    public IoContext(uint entries = 512, ILogger? log = null)
    {
        _entries = entries;
        _log = log;
    }

    /// <summary>Signalled by the ring whenever a completion is posted, and by helper threads; -1 never.</summary>
    public int WakeFd => _wake.Fd;

    /// <summary>Operations in the kernel or with a helper thread, not yet completed.</summary>
    public int InFlight => _inFlight;

    /// <summary>Setup flags of the ring (0 before first use); for logs and tests.</summary>
    public uint RingFlags => _ring?.SetupFlags ?? 0;

    internal IoUring.IoUring Ring => _ring ??= CreateRing();

    /// <summary>The most operations allowed in the kernel at once: one completion-ring entry each.</summary>
    internal int KernelCapacity => (int)Ring.CqEntries;

    private IoUring.IoUring CreateRing()
    {
        var ring = IoUring.IoUring.Create(_entries);
        try
        {
            ring.RegisterEventFd(_wake.Fd);
        }
        catch
        {
            ring.Dispose();
            throw;
        }
        return ring;
    }

    internal int AddTarget(IIoCompletionTarget target)
    {
        int free = _targets.IndexOf(null);
        if (free >= 0)
        {
            _targets[free] = target;
            return free;
        }
        _targets.Add(target);
        _outstanding.Add(0);
        return _targets.Count - 1;
    }

    /// <summary>Forgets a channel. Only legal once nothing of it is outstanding: its index may be reused.</summary>
    internal void RemoveTarget(int index)
    {
        if (_outstanding[index] != 0) throw new InvalidOperationException($"I/O target {index} still has {_outstanding[index]} operations outstanding");
        if (_targets[index] is { } target) _polled.Remove(target);
        _targets[index] = null;
    }

    /// <summary>Have <see cref="IIoCompletionTarget.OnPoll"/> called on every <see cref="Poll"/> (until <see cref="StopPolling"/>).</summary>
    internal void RequestPolling(IIoCompletionTarget target)
    {
        if (!_polled.Contains(target)) _polled.Add(target);
    }

    internal void StopPolling(IIoCompletionTarget target) => _polled.Remove(target);

    /// <summary>Makes <paramref name="host"/> (the reactor) sleep on the wake sources channels register, those
    /// registered so far included. Reactor thread only.</summary>
    public void SetWakeSourceHost(IWakeSourceHost host)
    {
        _wakeHost = host;
        foreach (int fd in _wakeSources.Keys) host.AddWakeSource(fd);
    }

    /// <summary>
    /// Has the reactor wake when <paramref name="fd"/> (an eventfd a library signals, e.g. librbd's completion
    /// notification) becomes readable, in addition to <see cref="WakeFd"/>; counted, so several channels may register
    /// the same fd. Without a host (tests that poll in a loop) nothing sleeps, so nothing is needed. Reactor thread only.
    /// </summary>
    internal void AddWakeSource(int fd)
    {
        _wakeSources.TryGetValue(fd, out int count);
        _wakeSources[fd] = count + 1;
        if (count == 0) _wakeHost?.AddWakeSource(fd);
    }

    /// <summary>Undoes one <see cref="AddWakeSource"/>; the last one takes the fd out of the reactor's set.</summary>
    internal void RemoveWakeSource(int fd)
    {
        if (!_wakeSources.TryGetValue(fd, out int count)) return;
        if (count > 1)
        {
            _wakeSources[fd] = count - 1;
            return;
        }
        _wakeSources.Remove(fd);
        _wakeHost?.RemoveWakeSource(fd);
    }

    /// <summary>Puts <paramref name="fd"/> into the ring's registered-file table; -1 when the table is full or the
    /// kernel refuses (the caller then uses the plain fd).</summary>
    internal int RegisterFile(int fd)
    {
        int slot = Array.IndexOf(_fileSlots, false);
        if (slot < 0) return -1;
        try
        {
            if (!_filesRegistered)
            {
                Ring.RegisterFileTable(MaxRegisteredFiles);
                _filesRegistered = true;
            }
            Ring.SetFile(slot, fd);
        }
        catch (IoUringException)
        {
            return -1;
        }
        _fileSlots[slot] = true;
        return slot;
    }

    internal void UnregisterFile(int slot)
    {
        if (slot < 0 || _ring is null) return;
        try { _ring.SetFile(slot, -1); }
        catch (IoUringException) { }
        _fileSlots[slot] = false;
    }

    /// <summary>
    /// An SQE for one operation of target <paramref name="target"/>, counted as in flight; null when the
    /// submission ring is full even after submitting, or the kernel already holds as many operations as the
    /// completion ring has room for. On null the caller parks the operation with <see cref="WaitForSqe"/>.
    /// </summary>
    internal IoUringNative.Sqe* TryNextSqe(int target)
    {
        var ring = Ring;
        if (_inKernel >= ring.CqEntries) return null;
        var sqe = ring.NextSqe();
        if (sqe == null)
        {
            ring.Submit();
            sqe = ring.NextSqe();
            if (sqe == null) return null;
        }
        _inKernel++;
        _inFlight++;
        _outstanding[target]++;
        return sqe;
    }

    /// <summary>Parks operation <paramref name="tag"/> of <paramref name="target"/> until an SQE is free; it is
    /// resumed with <see cref="IIoCompletionTarget.OnSqeAvailable"/>, in arrival order.</summary>
    internal void WaitForSqe(int target, ulong tag) => _sqeWaiters.Enqueue(UserData(target, tag));

    /// <summary>Counts an operation handed to a helper thread, which completes it with <see cref="PostCompletion"/>.</summary>
    internal void BeginPosted(int target)
    {
        _inFlight++;
        _outstanding[target]++;
    }

    /// <summary>
    /// Completes an operation begun with <see cref="BeginPosted"/>; callable from any thread. The result reaches
    /// the target on the reactor thread in the next <see cref="Poll"/> (the reactor is woken for it).
    /// </summary>
    internal void PostCompletion(int target, ulong tag, int result)
    {
        _posted.Enqueue(new Posted(target, tag, result));
        Wake();
    }

    /// <summary>Wakes the reactor if it sleeps (any thread); it then polls its queues and this engine, which runs
    /// deferred work.</summary>
    public void Wake()
    {
        if (!_disposed) EventFd.Signal(_wake.Fd);
    }

    internal static ulong UserData(int target, ulong tag) => ((ulong)target << TagBits) | (tag & TagMask);

    /// <summary>Submits what this iteration prepared and dispatches finished operations; returns how much happened.</summary>
    public int Poll()
    {
        int work = 0;
        while (_posted.TryDequeue(out var posted))
        {
            _inFlight--;
            _outstanding[posted.Target]--;
            Dispatch(posted.Target, posted.Tag, posted.Result, sqeAvailable: false);
            work++;
        }
        if (_ring is not null && (_inKernel > 0 || _ring.PendingSubmissions > 0))
        {
            _ring.Submit(reap: true);
            work += Reap();
            // With more completions than the CQ holds the kernel keeps the rest aside (IORING_FEAT_NODROP) and
            // flags it; another enter moves them into the ring. Our in-kernel limit keeps this from happening.
            for (int i = 0; i < 4 && _ring.CqOverflowPending; i++)
            {
                _ring.Submit(reap: true);
                work += Reap();
            }
        }
        int waiting = _sqeWaiters.Count;
        for (int i = 0; i < waiting && _ring is not null && _inKernel < _ring.CqEntries && _ring.SqSpace > 0; i++)
        {
            ulong userData = _sqeWaiters.Dequeue();
            Dispatch((int)(userData >> TagBits), userData & TagMask, 0, sqeAvailable: true);
            work++;
        }
        for (int i = 0; i < _polled.Count; i++)
        {
            var target = _polled[i];
            try
            {
                work += target.OnPoll();
            }
            catch (Exception e)
            {
                Fault(target, e);
            }
        }
        return work;
    }

    private int Reap()
    {
        int completed = 0;
        while (_ring!.TryPeekCompletion(out var cqe))
        {
            _ring.AdvanceCompletion();
            _inKernel--;
            _inFlight--;
            completed++;
            int index = (int)(cqe.UserData >> TagBits);
            if (index < _targets.Count)
            {
                _outstanding[index]--;
                Dispatch(index, cqe.UserData & TagMask, cqe.Res, sqeAvailable: false);
            }
        }
        return completed;
    }

    private void Dispatch(int index, ulong tag, int result, bool sqeAvailable)
    {
        var target = _targets[index];
        if (target is null) return;
        try
        {
            if (sqeAvailable) target.OnSqeAvailable(tag);
            else target.OnIoCompleted(tag, result);
        }
        catch (Exception e)
        {
            Fault(target, e);
        }
    }

    private void Fault(IIoCompletionTarget target, Exception error)
    {
        _log?.LogError(error, "I/O completion handling failed; the channel is stopped: {Error}", error.Message);
        try
        {
            target.OnFault(error);
        }
        catch (Exception again)
        {
            _log?.LogError(again, "stopping a faulted channel failed too: {Error}", again.Message);
        }
    }

    /// <summary>Resets the wake eventfd after the reactor woke on it.</summary>
    public void ClearWake() => EventFd.Drain(_wake.Fd);

    public void Dispose()
    {
        _disposed = true;
        _ring?.Dispose();
        _wake.Dispose();
    }
}
