using BlkTarget.IntegrationTests;
using BlkTarget.Storage;
using BlkTarget.Storage.RawFile;
using BlkTarget.Vhost.Reactor;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlkTarget.Vhost.Tests;

/// <summary>The reactor loop when something on it fails: one queue, the I/O engine, a queue retired with I/O in flight.</summary>
public sealed class ReactorTests : IDisposable
{
    private readonly TestLogger _log = new(null);
    private readonly Reactor.Reactor _reactor;

    public ReactorTests() => _reactor = new Reactor.Reactor(0, null, TimeSpan.FromMicroseconds(50), _log);

    public void Dispose() => _reactor.Dispose();

    /// <summary>A queue that counts its polls; it can throw from Poll and pretend to have backend operations.</summary>
    private sealed class FakeQueue(string device, int index) : IReactorQueue
    {
        private int _polls;
        public volatile bool Throw;
        public volatile bool ThrowWhenFaulted;
        public volatile int Backend;
        public volatile bool Disposed;
        public volatile Exception? FaultedWith;

        public int Polls => Volatile.Read(ref _polls);
        public string DeviceName => device;
        public int Index => index;
        public bool Faulted => FaultedWith is not null;
        public int BackendInFlight => Backend;
        public int KickFd => -1;
        /// <summary>QoS: the Stopwatch timestamp the queue wants to be polled again by (0: none).</summary>
        public long Throttled;
        public long ThrottledUntil => Volatile.Read(ref Throttled);
        /// <summary>Stopwatch timestamp of the latest poll.</summary>
        public long LastPoll;

        public int Poll()
        {
            Volatile.Write(ref LastPoll, System.Diagnostics.Stopwatch.GetTimestamp());
            Interlocked.Increment(ref _polls);
            if (Faulted ? ThrowWhenFaulted : Throw) throw new InvalidOperationException("injected bug");
            return 0;
        }

        public bool PrepareToSleep() => false;
        public void WokeUp() { }
        public void Fault(Exception error) => FaultedWith = error;
        public void Dispose() => Disposed = true;
    }

    [Fact]
    public void A_sleeping_reactor_wakes_by_itself_when_a_throttled_queue_gets_its_tokens_back()
    {
        var queue = new FakeQueue("throttled", 0);
        _reactor.Invoke(() => _reactor.Attach(queue));
        WaitUntil(() => _reactor.IsSleeping, "the idle reactor sleeps");
        // No eventfd announces returning tokens: the reactor must come back at ThrottledUntil on its own.
        long due = System.Diagnostics.Stopwatch.GetTimestamp() + System.Diagnostics.Stopwatch.Frequency / 20;   // in 50 ms
        Volatile.Write(ref queue.Throttled, due);
        _reactor.Post(() => { });                    // one wake-up so that the next sleep sees the deadline
        WaitUntil(() => Volatile.Read(ref queue.LastPoll) >= due, "the throttled queue is polled again at its deadline");
        double late = (Volatile.Read(ref queue.LastPoll) - due) / (double)System.Diagnostics.Stopwatch.Frequency;
        Assert.InRange(late, 0, 0.5);
        // And it slept in between rather than spinning.
        Volatile.Write(ref queue.Throttled, 0);
        WaitUntil(() => _reactor.IsSleeping, "the reactor sleeps again");
    }

    /// <summary>A completion sink whose completion handling fails, like a device model with a bug.</summary>
    private sealed class ThrowingSink : IBlockCompletionSink
    {
        public volatile int Calls;
        public volatile Exception? FaultedWith;

        public void Complete(ulong tag, BlockStatus status)
        {
            Calls++;
            throw new InvalidOperationException("injected completion bug");
        }

        public void ChannelFaulted(Exception error) => FaultedWith = error;
    }

    private static void WaitUntil(Func<bool> condition, string what)
    {
        long deadline = Environment.TickCount64 + 5000;
        while (!condition())
        {
            if (Environment.TickCount64 > deadline) throw new TimeoutException($"timed out waiting until {what}");
            Thread.Sleep(1);
        }
    }

    /// <summary>Two mailbox round trips: the reactor has finished at least one whole loop round (every queue polled).</summary>
    private void OneFullRound()
    {
        _reactor.Invoke(() => { });
        _reactor.Invoke(() => { });
    }

    private int QueueCount()
    {
        int count = 0;
        _reactor.Invoke(() => count = _reactor.QueueCount);
        return count;
    }

    [Fact]
    public void A_queue_that_throws_is_stopped_and_logged_with_its_device_name_while_the_reactor_serves_the_others()
    {
        var bad = new FakeQueue("disk-a", 3) { Throw = true };
        var good = new FakeQueue("disk-b", 0);
        _reactor.Invoke(() =>
        {
            _reactor.Attach(bad);
            _reactor.Attach(good);
        });
        WaitUntil(() => bad.Faulted, "the failing queue is faulted");
        int before = good.Polls;
        OneFullRound();
        Assert.True(good.Polls > before);
        Assert.Null(_reactor.Failure);
        Assert.Contains(_log.Lines, l => l.StartsWith("[Error] disk-a queue 3: internal error, queue stopped", StringComparison.Ordinal));
        // The faulted queue stays on the reactor: it reports drained only after its backend returns everything.
        Assert.Equal(2, QueueCount());

        // Throwing again even while faulted: it is taken off the reactor.
        bad.ThrowWhenFaulted = true;
        OneFullRound();
        Assert.True(_log.Contains("disk-a queue 3: failed again"));
        Assert.Equal(1, QueueCount());
        before = good.Polls;
        OneFullRound();
        Assert.True(good.Polls > before);
    }

    [Fact]
    public void An_exception_from_a_channels_completion_path_does_not_end_the_reactor()
    {
        string path = Path.Combine(Path.GetTempPath(), $"blkt-reactor-{Guid.NewGuid():N}.img");
        try
        {
            using var disk = FileDisk.Open(new FileDiskOptions { Path = path, DirectIo = false, CreateSize = 1 << 20 }, NullLogger.Instance);
            var good = new FakeQueue("disk-b", 0);
            var sink = new ThrowingSink();
            IBlockChannel? channel = null;
            _reactor.Invoke(() =>
            {
                _reactor.Attach(good);
                channel = disk.OpenChannel(_reactor.Io, sink, 4);
                // Completed through the reactor's io_uring, whose dispatch calls the throwing sink.
                channel.Submit(new BlockRequest { Operation = BlockOperation.Flush, Tag = 7 });
            });
            WaitUntil(() => sink.Calls > 0, "the completion reached the sink");
            // The I/O engine reports the channel faulted, or (an engine that lets the exception escape) the reactor
            // logs it; either way the loop goes on.
            WaitUntil(() => sink.FaultedWith is not null || _log.Contains("I/O engine failed"), "the failure is reported");
            int before = good.Polls;
            OneFullRound();
            Assert.True(good.Polls > before);
            Assert.Null(_reactor.Failure);
            _reactor.Invoke(() => channel!.Dispose());
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void A_retired_queue_is_not_polled_again_and_is_disposed_once_its_backend_is_idle()
    {
        var queue = new FakeQueue("disk-a", 1) { Backend = 2 };
        _reactor.Invoke(() => _reactor.Attach(queue));
        _reactor.Invoke(() => _reactor.Retire(queue));
        int polls = queue.Polls;
        OneFullRound();
        Assert.Equal(polls, queue.Polls);
        Assert.False(queue.Disposed);
        Assert.Equal(0, QueueCount());
        queue.Backend = 0;
        OneFullRound();
        Assert.True(queue.Disposed);
        int retiring = -1;
        _reactor.Invoke(() => retiring = _reactor.RetiringCount);
        Assert.Equal(0, retiring);
    }
}
