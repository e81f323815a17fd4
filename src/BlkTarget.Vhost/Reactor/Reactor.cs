using System.Collections.Concurrent;
using System.Diagnostics;
using BlkTarget.Storage;
using BlkTarget.Storage.Interop;

namespace BlkTarget.Vhost.Reactor;

/// <summary>
/// One polling thread that owns a set of virtqueues. It spins over its queues while there is work, and after
/// <see cref="IdleSpin"/> without any it re-enables guest notifications and blocks in epoll on the queues' kick
/// eventfds, so an idle target uses no CPU. Other threads never touch its queues directly: they post
/// actions with <see cref="Invoke"/>, which run between polling rounds.
/// </summary>
public sealed class Reactor : IDisposable
{
    private const ulong WakeTag = ulong.MaxValue;
    private const ulong IoTag = ulong.MaxValue - 1;
    private readonly List<IReactorQueue> _queues = [];
    private readonly ConcurrentQueue<Action> _mailbox = new();
    private readonly OwnedFd _epoll;
    private readonly OwnedFd _wake;
    private readonly Thread _thread;
    private readonly int? _cpu;
    private readonly long _idleSpinTicks;
    private readonly long _yieldAfterTicks = Stopwatch.Frequency / 200_000;   // 5 us
    private volatile bool _stopping;
    private volatile bool _sleeping;

    public Reactor(int id, int? cpu, TimeSpan idleSpin)
    {
        Id = id;
        _cpu = cpu;
        IdleSpin = idleSpin;
        _idleSpinTicks = (long)(idleSpin.TotalSeconds * Stopwatch.Frequency);
        _epoll = Epoll.Create();
        _wake = EventFd.Create();
        Epoll.Add(_epoll, _wake.Fd, WakeTag);
        Io = new IoContext();
        Epoll.Add(_epoll, Io.WakeFd, IoTag);
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

    /// <summary>Removes a queue from the polling set (reactor thread only).</summary>
    public void Detach(IReactorQueue queue)
    {
        Debug.Assert(IsReactorThread);
        if (_queues.Remove(queue) && queue.KickFd >= 0) Epoll.Remove(_epoll, queue.KickFd);
    }

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
            Console.Error.WriteLine($"reactor {Id} failed: {e}");
        }
    }

    private void Loop()
    {
        Span<Epoll.Event> events = stackalloc Epoll.Event[64];
        long lastWork = Stopwatch.GetTimestamp();
        while (!_stopping)
        {
            RunMailbox();
            int work = 0;
            var queues = _queues;
            for (int i = 0; i < queues.Count; i++) work += PollOne(queues[i]);
            // One io_uring_enter for everything the queues submitted this round, and the completions so far.
            work += Io.Poll();
            if (work > 0)
            {
                lastWork = Stopwatch.GetTimestamp();
                continue;
            }
            long idle = Stopwatch.GetTimestamp() - lastWork;
            if (idle < _idleSpinTicks)
            {
                // Past a short spin, keep polling but give the CPU away on each round (sched_yield returns at once
                // when nothing else is runnable here). When threads outnumber cores, the guest's vCPU or a load
                // generator may share this CPU: a plain spin would hold it for a whole time slice while the
                // request we wait for cannot even be submitted.
                if (idle > _yieldAfterTicks) Thread.Yield();
                else Thread.SpinWait(8);
                continue;
            }
            Sleep(events);
            lastWork = Stopwatch.GetTimestamp();
        }
        RunMailbox();
    }

    /// <summary>Polls one queue; an exception (a bug, never guest input) stops that queue only.</summary>
    private int PollOne(IReactorQueue queue)
    {
        try
        {
            return queue.Poll();
        }
        catch (Exception e)
        {
            Console.Error.WriteLine($"reactor {Id}: queue failed and was stopped: {e}");
            queue.Fault(e);
            Detach(queue);
            return 1;
        }
    }

    private void Sleep(Span<Epoll.Event> events)
    {
        bool stayAwake = !_mailbox.IsEmpty;
        foreach (var queue in _queues) stayAwake |= queue.PrepareToSleep();
        if (!stayAwake)
        {
            _sleeping = true;
            int n = Epoll.Wait(_epoll, events, -1);
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

    private void RunMailbox()
    {
        while (_mailbox.TryDequeue(out var action)) action();
    }

    public void Dispose()
    {
        _stopping = true;
        EventFd.Signal(_wake.Fd);
        if (!_thread.Join(TimeSpan.FromSeconds(10))) Console.Error.WriteLine($"reactor {Id} did not stop in time");
        _epoll.Dispose();
        _wake.Dispose();
        Io.Dispose();
    }
}
