using System.Collections.Concurrent;
using System.Diagnostics;
using BlkTarget.Storage;
using BlkTarget.Storage.Interop;
using Microsoft.Extensions.Logging;

namespace BlkTarget.Vhost.Reactor;

/// <summary>
/// One polling thread that owns a set of virtqueues. It spins over its queues while there is work, and after
/// <see cref="IdleSpin"/> without any it re-enables guest notifications and blocks in epoll on the queues' kick
/// eventfds, so an idle target uses no CPU. Other threads never touch its queues directly: they post
/// actions with <see cref="Invoke"/>, which run between polling rounds. A failure while serving one queue stops
/// that queue only; a failure of the I/O engine is logged and the loop goes on serving the others.
/// </summary>
public sealed class Reactor : IDisposable, IWakeSourceHost
{
    private const ulong WakeTag = ulong.MaxValue;
    private const ulong IoTag = ulong.MaxValue - 1;
    private readonly List<IReactorQueue> _queues = [];
    /// <summary>Queues taken off the polling set whose backend still had operations in flight.</summary>
    private readonly List<IReactorQueue> _retiring = [];
    /// <summary>Retired queues that failed while being released: kept referenced for good, so that nothing they hold
    /// (guest memory mappings the backend may still write into) is ever finalized.</summary>
    private readonly List<IReactorQueue> _leaked = [];
    private readonly ConcurrentQueue<Action> _mailbox = new();
    private readonly OwnedFd _epoll;
    private readonly OwnedFd _wake;
    private readonly Thread _thread;
    private readonly int? _cpu;
    private readonly long _idleSpinTicks;
    private readonly long _yieldAfterTicks = Stopwatch.Frequency / 200_000;   // 5 us
    private readonly ILogger _log;
    private readonly FailureThrottle _ioFailures = new(TimeSpan.FromSeconds(1));
    private long _allocatedBytes;
    private long _busyTicks;
    private volatile bool _stopping;
    private volatile bool _sleeping;
    /// <summary>Loop iterations so far: a reactor that is neither asleep nor advancing this is stuck.</summary>
    private long _heartbeat;

    /// <summary>Starts the reactor thread (pinned to <paramref name="cpu"/> when given). <paramref name="idleSpin"/>:
    /// how long it polls without work before sleeping in epoll. <paramref name="log"/> gets its failures.</summary>
    public Reactor(int id, int? cpu, TimeSpan idleSpin, ILogger log)
    {
        Id = id;
        _cpu = cpu;
        _log = log;
        IdleSpin = idleSpin;
        _idleSpinTicks = (long)(idleSpin.TotalSeconds * Stopwatch.Frequency);
        _epoll = Epoll.Create();
        _wake = EventFd.Create();
        Epoll.Add(_epoll, _wake.Fd, WakeTag);
        Io = new IoContext(log: log);
        Epoll.Add(_epoll, Io.WakeFd, IoTag);
        Io.SetWakeSourceHost(this);
        _thread = new Thread(Run) { IsBackground = true, Name = cpu is int c ? $"reactor{id}/cpu{c}" : $"reactor{id}" };
        _thread.Start();
    }

    public int Id { get; }
    /// <summary>This reactor's I/O engine; its io_uring is created on the reactor thread at first use.</summary>
    public IoContext Io { get; }
    public int? Cpu => _cpu;
    public TimeSpan IdleSpin { get; }
    public int QueueCount => _queues.Count;
    /// <summary>Set when the reactor ended because its loop threw; the message says why.</summary>
    public string? Failure { get; private set; }

    /// <summary>
    /// Bytes the reactor thread has allocated on the managed heap since it started
    /// (<see cref="GC.GetAllocatedBytesForCurrentThread"/>), as published at the start of its latest loop round and
    /// just before it sleeps. Lets tests prove that the data path allocates nothing per request on the thread that
    /// actually runs it.
    /// </summary>
    public long AllocatedBytes => Volatile.Read(ref _allocatedBytes);

    /// <summary>
    /// Seconds the reactor spent in polling rounds that found work (requests, completions, mailbox actions), since it
    /// started; the rest of its life it spun idle or slept. Δbusy / Δwall-clock between two reads is its load (0..1),
    /// the figure `blktarget top` and blktarget_reactor_busy_ratio show: a polling reactor's OS CPU time is ~100%
    /// while it spins, whatever it serves. Updated at the end of every busy round from timestamps the loop takes
    /// anyway (no extra clock read); readable from any thread.
    /// </summary>
    public double BusySeconds => Volatile.Read(ref _busyTicks) / (double)Stopwatch.Frequency;

    public bool IsReactorThread => Thread.CurrentThread == _thread;

    /// <summary>Runs <paramref name="action"/> on the reactor thread and waits for it.</summary>
    public void Invoke(Action action)
    {
        if (IsReactorThread)
        {
            action();
            return;
        }
        using var done = new ManualResetEventSlim();
        Exception? error = null;
        Post(() =>
        {
            try { action(); }
            catch (Exception e) { error = e; }
            finally { done.Set(); }
        });
        while (!done.Wait(TimeSpan.FromSeconds(1)))
            if (!_thread.IsAlive) throw new InvalidOperationException($"reactor {Id} is not running: {Failure}");
        if (error is not null) throw new InvalidOperationException($"reactor {Id}: {error.Message}", error);
    }

    /// <summary>Queues an action for the reactor thread without waiting.</summary>
    public void Post(Action action)
    {
        _mailbox.Enqueue(action);
        EventFd.Signal(_wake.Fd);
    }

    /// <summary>Adds a queue to the polling set (reactor thread only).</summary>
    public void Attach(IReactorQueue queue)
    {
        Debug.Assert(IsReactorThread);
        _queues.Add(queue);
        if (queue.KickFd >= 0) Epoll.Add(_epoll, queue.KickFd, (ulong)queue.KickFd);
    }

    /// <summary>Removes a queue from the polling set (reactor thread only). Afterwards the reactor no longer reads
    /// its kick eventfd, so the caller may close it.</summary>
    public void Detach(IReactorQueue queue)
    {
        Debug.Assert(IsReactorThread);
        if (_queues.Remove(queue) && queue.KickFd >= 0) Epoll.Remove(_epoll, queue.KickFd);
    }

    /// <summary>Sleeps on <paramref name="fd"/> too (a backend's completion eventfd, registered through
    /// <see cref="IoContext"/>); drained as an eventfd when it wakes the reactor. Reactor thread only.</summary>
    public void AddWakeSource(int fd) => Epoll.Add(_epoll, fd, (ulong)fd);

    public void RemoveWakeSource(int fd) => Epoll.Remove(_epoll, fd);

    /// <summary>
    /// Takes a queue off the reactor for good although its backend still has operations in flight (reactor thread
    /// only): it is never polled again, and it is disposed here once <see cref="IReactorQueue.BackendInFlight"/>
    /// reaches 0. Disposing it earlier would free what the backend channel still routes completions to; and while
    /// the reactor holds it, the guest memory it references stays reachable, hence mapped.
    /// </summary>
    public void Retire(IReactorQueue queue)
    {
        Debug.Assert(IsReactorThread);
        Detach(queue);
        _retiring.Add(queue);
        DisposeIdleRetired();
    }

    /// <summary>Queues retired and not yet disposed (for tests).</summary>
    public int RetiringCount => _retiring.Count;

    private void Run()
    {
        try
        {
            if (_cpu is int cpu) Affinity.PinCurrentThread(cpu);
            Loop();
        }
        catch (Exception e)
        {
            Failure = e.ToString();
            _log.LogCritical(e, "reactor {Reactor} failed and stopped; its queues are no longer served", Id);
        }
    }

    private void Loop()
    {
        Span<Epoll.Event> events = stackalloc Epoll.Event[64];
        // The clock is read only where it decides something: on idle rounds (every IdleRoundsPerClock-th, and the first
        // one after work), and every BusyRoundsPerClock-th busy round for the busy-time statistic. A clock read costs
        // ~33 ns here; at QD1 every busy round is one request (a ~1.9 µs round trip), and each idle round's length is
        // what a request arriving during it waits on average half of.
        long clock = Stopwatch.GetTimestamp();
        long lastWork = clock;
        long busySince = 0;          // 0: idle; else the clock reading before the current busy stretch began
        int busyRounds = 0;
        int idleRounds = 0;
        while (!_stopping)
        {
            Volatile.Write(ref _heartbeat, _heartbeat + 1);
            PublishAllocatedBytes();
            RunMailbox();
            int work = 0;
            var queues = _queues;
            for (int i = 0; i < queues.Count; i++) work += PollOne(queues[i]);
            // One io_uring_enter for everything the queues submitted this round, and the completions so far.
            work += PollIo();
            if (_retiring.Count > 0) DisposeIdleRetired();
            if (work > 0)
            {
                if (busySince == 0) busySince = clock;
                if (++busyRounds % BusyRoundsPerClock == 0) AddBusyTime(ref busySince, ref clock);
                idleRounds = 0;
                continue;
            }
            if (busySince != 0)
            {
                AddBusyTime(ref busySince, ref clock);
                busySince = 0;
                lastWork = clock;
            }
            else if (++idleRounds % IdleRoundsPerClock == 0) clock = Stopwatch.GetTimestamp();
            long idle = clock - lastWork;
            if (idle < _idleSpinTicks)
            {
                // Past a short spin, keep polling but give the CPU away on each round (sched_yield returns at once
                // when nothing else is runnable here). When threads outnumber cores, the guest's vCPU or a load
                // generator may share this CPU: a plain spin would hold it for a whole time slice while the
                // request we wait for cannot even be submitted.
                if (idle > _yieldAfterTicks) Thread.Yield();
                else SpinBriefly();
                continue;
            }
            Sleep(events);
            clock = lastWork = Stopwatch.GetTimestamp();
        }
        RunMailbox();
    }

    /// <summary>Idle rounds per clock read: a round is a poll and a short spin (~50 ns), so the idle time is known to
    /// within a few hundred nanoseconds, against an idle spin of 200 µs by default.</summary>
    private const int IdleRoundsPerClock = 8;

    /// <summary>Busy rounds per clock read while the reactor stays busy, so the busy-time statistic keeps moving.</summary>
    private const int BusyRoundsPerClock = 256;

    /// <summary>Adds the busy time since <paramref name="busySince"/> to the statistic and moves both to now.</summary>
    private void AddBusyTime(ref long busySince, ref long clock)
    {
        clock = Stopwatch.GetTimestamp();
        Volatile.Write(ref _busyTicks, _busyTicks + (clock - busySince));
        busySince = clock;
    }

    /// <summary>
    /// A pause of a few tens of nanoseconds between polling rounds that found nothing. Thread.SpinWait(8) was used
    /// before: the runtime normalises its iterations so that it took ~1 µs here (measured), and a request arriving
    /// during it waited on average half of that: a quarter of a QD1 round trip on a RAM disk (~2 µs).
    /// </summary>
    private static void SpinBriefly()
    {
        if (System.Runtime.Intrinsics.X86.X86Base.IsSupported)
        {
            for (int i = 0; i < 2; i++) System.Runtime.Intrinsics.X86.X86Base.Pause();
        }
        else Thread.SpinWait(1);
    }

    private void PublishAllocatedBytes() => Volatile.Write(ref _allocatedBytes, GC.GetAllocatedBytesForCurrentThread());

    /// <summary>Polls one queue; an exception (a bug, never guest input) stops that queue only.</summary>
    private int PollOne(IReactorQueue queue)
    {
        try
        {
            return queue.Poll();
        }
        catch (Exception e)
        {
            StopFailedQueue(queue, e);
            return 1;
        }
    }

    /// <summary>
    /// A faulted queue stays in the polling set, where it only waits for its backend to return what it holds
    /// (so that a stop can report drained). One that throws even then is taken off: nothing it does can be
    /// trusted, and the session's drain timeout gives up on it.
    /// </summary>
    private void StopFailedQueue(IReactorQueue queue, Exception error)
    {
        try
        {
            if (queue.Faulted)
            {
                _log.LogError(error, "{Device} queue {Queue}: failed again after an internal error; reactor {Reactor} stops polling it",
                    queue.DeviceName, queue.Index, Id);
                Detach(queue);
                return;
            }
            _log.LogError(error, "{Device} queue {Queue}: internal error, queue stopped (reactor {Reactor} serves its other queues)",
                queue.DeviceName, queue.Index, Id);
            queue.Fault(error);
        }
        catch (Exception e)
        {
            _log.LogError(e, "{Device} queue {Queue}: could not be stopped cleanly; reactor {Reactor} stops polling it", queue.DeviceName, queue.Index, Id);
            Detach(queue);
        }
    }

    /// <summary>
    /// Submits and reaps the I/O engine's operations. An exception escaping it (a channel's completion handling, or
    /// the ring itself) must not end the loop that serves every other queue: it is logged (at most once a second,
    /// with a count of the ones left out) and counted as work, so completions still waiting in the ring are
    /// reaped on the next round rather than after a sleep nothing would wake.
    /// </summary>
    private int PollIo()
    {
        try
        {
            return Io.Poll();
        }
        catch (Exception e)
        {
            if (_ioFailures.ShouldLog(out long suppressed))
                _log.LogError(e, "reactor {Reactor}: I/O engine failed while dispatching completions; the reactor keeps serving its queues ({Suppressed} similar failure(s) since the last report)",
                    Id, suppressed);
            return 1;
        }
    }

    /// <summary>Disposes the retired queues whose backend has nothing in flight any more.</summary>
    private void DisposeIdleRetired()
    {
        for (int i = _retiring.Count - 1; i >= 0; i--)
        {
            var queue = _retiring[i];
            try
            {
                if (queue.BackendInFlight != 0) continue;
                _retiring.RemoveAt(i);
                queue.Dispose();
                _log.LogInformation("{Device} queue {Queue}: its backend finished the abandoned requests; queue released", queue.DeviceName, queue.Index);
            }
            catch (Exception e)
            {
                // Its state is unknown: never touch it again, and leak it rather than free buffers the backend may
                // still use.
                _retiring.Remove(queue);
                _leaked.Add(queue);
                _log.LogError(e, "{Device} queue {Queue}: failed while being released; left as it is", queue.DeviceName, queue.Index);
            }
        }
    }

    private void Sleep(Span<Epoll.Event> events)
    {
        bool stayAwake = !_mailbox.IsEmpty;
        long wakeAt = long.MaxValue;
        foreach (var queue in _queues)
        {
            stayAwake |= queue.PrepareToSleep();
            long until = queue.ThrottledUntil;
            if (until != 0 && until < wakeAt) wakeAt = until;
        }
        // A queue held back by QoS gets its tokens back at a known time, which no eventfd announces: the epoll
        // timeout is that timer (rounded up to whole milliseconds; the bucket accounts for any lateness, so the rate
        // is kept, and a timerfd would only add a syscall per sleep for precision the limits do not need).
        int timeoutMs = -1;
        if (wakeAt != long.MaxValue)
        {
            long ticks = wakeAt - Stopwatch.GetTimestamp();
            if (ticks <= 0) stayAwake = true;
            // Divided first: a wait of a huge request under a tiny byte rate must not overflow into "forever".
            else timeoutMs = (int)Math.Min(int.MaxValue, ticks / Math.Max(1, Stopwatch.Frequency / 1000) + 1);
        }
        if (!stayAwake)
        {
            PublishAllocatedBytes();
            _sleeping = true;
            int n = Epoll.Wait(_epoll, events, timeoutMs);
            _sleeping = false;
            for (int i = 0; i < n; i++)
            {
                ulong tag = events[i].Data;
                if (tag == IoTag) Io.ClearWake();
                else EventFd.Drain(tag == WakeTag ? _wake.Fd : (int)tag);
            }
        }
        foreach (var queue in _queues) queue.WokeUp();
    }

    /// <summary>True while the reactor is blocked in epoll (for tests and the idle-CPU check).</summary>
    public bool IsSleeping => _sleeping;

    /// <summary>Counts the reactor's loop iterations (any thread may read it): with <see cref="IsSleeping"/>, how a
    /// watchdog tells a busy reactor from a stuck one.</summary>
    public long Heartbeat => Volatile.Read(ref _heartbeat);

    private void RunMailbox()
    {
        while (_mailbox.TryDequeue(out var action)) action();
    }

    public void Dispose()
    {
        _stopping = true;
        EventFd.Signal(_wake.Fd);
        if (!_thread.Join(TimeSpan.FromSeconds(10))) _log.LogError("reactor {Reactor} did not stop in time", Id);
        // Retired queues whose backend never finished stay undisposed: their buffers may still be in use.
        if (_retiring.Count > 0) _log.LogWarning("reactor {Reactor}: {Count} retired queue(s) still had backend operations in flight at shutdown", Id, _retiring.Count);
        _epoll.Dispose();
        _wake.Dispose();
        Io.Dispose();
    }
}
