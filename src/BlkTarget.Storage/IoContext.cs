using BlkTarget.Storage.Interop;
using BlkTarget.Storage.IoUring;

namespace BlkTarget.Storage;

/// <summary>Receives the raw result of one io_uring operation a channel submitted.</summary>
internal interface IIoCompletionTarget
{
    void OnIoCompleted(ulong tag, int result);
}

/// <summary>
/// The I/O engine of one reactor thread: its io_uring (created on first use, on that thread, so that
/// SINGLE_ISSUER/DEFER_TASKRUN hold), the registered-file table, and the routing of completions back to the
/// channels that submitted them. The reactor calls <see cref="Poll"/> once per loop iteration (one
/// io_uring_enter for all submissions of the iteration) and sleeps on <see cref="WakeFd"/> with its kicks.
/// Backends that complete inline (RAM disk) never touch it.
/// </summary>
public sealed unsafe class IoContext : IDisposable
{
    private const int TagBits = 40;
    private const ulong TagMask = (1UL << TagBits) - 1;
    public const int MaxRegisteredFiles = 64;

    private readonly OwnedFd _wake = EventFd.Create();
    private readonly uint _entries;
    private readonly List<IIoCompletionTarget?> _targets = [];
    private readonly bool[] _fileSlots = new bool[MaxRegisteredFiles];
    private IoUring.IoUring? _ring;
    private bool _filesRegistered;
    private int _inFlight;

    public IoContext(uint entries = 512) => _entries = entries;

    /// <summary>Signalled by the ring whenever a completion is posted; -1 never.</summary>
    public int WakeFd => _wake.Fd;

    /// <summary>Operations submitted to the kernel (or prepared) and not yet completed.</summary>
    public int InFlight => _inFlight;

    /// <summary>Setup flags of the ring (0 before first use); for logs and tests.</summary>
    public uint RingFlags => _ring?.SetupFlags ?? 0;

    internal IoUring.IoUring Ring => _ring ??= CreateRing();

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
        return _targets.Count - 1;
    }

    internal void RemoveTarget(int index) => _targets[index] = null;

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

    /// <summary>An SQE for <paramref name="target"/>'s operation <paramref name="tag"/>; submits the batch so far
    /// when the SQ ring is full. Null only if the kernel takes nothing (the caller fails the request).</summary>
    internal IoUringNative.Sqe* NextSqe()
    {
        var ring = Ring;
        var sqe = ring.NextSqe();
        if (sqe == null)
        {
            ring.Submit();
            sqe = ring.NextSqe();
        }
        if (sqe != null) _inFlight++;
        return sqe;
    }

    internal static ulong UserData(int target, ulong tag) => ((ulong)target << TagBits) | (tag & TagMask);

    /// <summary>Submits what this iteration prepared and dispatches finished operations; returns how many finished.</summary>
    public int Poll()
    {
        if (_ring is null || (_inFlight == 0 && _ring.PendingSubmissions == 0)) return 0;
        _ring.Submit(reap: true);
        int completed = 0;
        while (_ring.TryPeekCompletion(out var cqe))
        {
            _ring.AdvanceCompletion();
            _inFlight--;
            completed++;
            int index = (int)(cqe.UserData >> TagBits);
            if (index < _targets.Count) _targets[index]?.OnIoCompleted(cqe.UserData & TagMask, cqe.Res);
        }
        return completed;
    }

    /// <summary>Resets the wake eventfd after the reactor woke on it.</summary>
    public void ClearWake() => EventFd.Drain(_wake.Fd);

    public void Dispose()
    {
        _ring?.Dispose();
        _wake.Dispose();
    }
}
