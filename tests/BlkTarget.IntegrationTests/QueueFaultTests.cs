using BlkTarget.Vhost.Frontend;
using BlkTarget.Vhost.Protocol;
using BlkTarget.Vhost.Tests;
using Xunit.Abstractions;
using static BlkTarget.IntegrationTests.TestData;

namespace BlkTarget.IntegrationTests;

/// <summary>
/// A queue that stops with requests still in the backend, over a real socket: after an internal error, and when a
/// stop times out. The guest's memory must stay in use for as long as the backend may write into it, and after
/// GET_VRING_BASE the target must not touch the ring or its eventfds.
/// </summary>
public sealed class QueueFaultTests(ITestOutputHelper output)
{
    private static readonly TimeSpan ShortDrain = TimeSpan.FromMilliseconds(300);

    private static TestTarget Target(ITestOutputHelper output, Func<DeferredDisk> disk, TimeSpan drainTimeout) =>
        new(output, new TargetSpec { Queues = 1, Reactors = 1, Backend = disk, Session = new VhostUserSessionOptions { DrainTimeout = drainTimeout } });

    /// <summary>Reads <paramref name="read"/> on the reactor thread, which owns the queue and the backend channel.</summary>
    private static T OnReactor<T>(TestTarget target, Func<T> read)
    {
        T value = default!;
        target.Reactors.Reactors[0].Invoke(() => value = read());
        return value;
    }

    private static void WaitUntil(Func<bool> condition, string what)
    {
        long deadline = Environment.TickCount64 + 10_000;
        while (!condition())
        {
            if (Environment.TickCount64 > deadline) throw new TimeoutException($"timed out waiting until {what}");
            Thread.Sleep(2);
        }
    }

    /// <summary>A started guest whose first request, a 4 KiB read (token 1), the backend holds.</summary>
    private static TestGuest ConnectWithReadInBackend(TestTarget target, DeferredDisk disk)
    {
        var guest = TestGuest.Connect(target.SocketPath, queueSize: 32);
        var blk = guest.Blk[0];
        Assert.True(blk.TrySubmit(BlkRequestType.In, 0, [guest.Allocate(4096)], 1));
        blk.Kick();
        WaitUntil(() => OnReactor(target, () => disk.Held) == 1, "the read is in the backend");
        return guest;
    }

    [Fact]
    public void A_queue_stopped_by_an_internal_error_answers_get_vring_base_only_once_the_backend_returned_its_io()
    {
        var disk = new DeferredDisk(16 << 20);
        using var target = Target(output, () => disk, TimeSpan.FromSeconds(30));
        using var guest = ConnectWithReadInBackend(target, disk);
        var blk = guest.Blk[0];
        var buffer = guest.Allocate(4096);

        // The next request makes the queue's processing throw: the queue stops, the target keeps running.
        OnReactor(target, () => disk.ThrowOnSubmit = true);
        Assert.True(blk.TrySubmit(BlkRequestType.Out, 8, [buffer], 2));
        blk.Kick();
        WaitUntil(() => target.Log.Contains("it0 queue 0: internal error, queue stopped"), "the fault is logged with the device name");

        // GET_VRING_BASE must wait: the backend may still write into the read's buffer.
        uint[]? bases = null;
        Exception? error = null;
        var stop = new Thread(() =>
        {
            try { bases = guest.Stop(); }
            catch (Exception e) { error = e; }
        });
        stop.Start();
        Assert.False(stop.Join(300), "GET_VRING_BASE was answered while the backend still held a request");
        OnReactor(target, () =>
        {
            disk.ReleaseCompletions();
            return 0;
        });
        Assert.True(stop.Join(TimeSpan.FromSeconds(10)));
        Assert.Null(error);
        Assert.Equal([(ushort)2], bases!);
        // Nothing was published after the fault: the guest gets neither request back.
        Assert.Equal(0, guest.SplitQueue(0).DeviceUsedIdx);
        Assert.False(target.Log.Contains("did not complete within"));
    }

    [Fact]
    public void A_stop_that_times_out_takes_the_queue_off_its_reactor_before_its_eventfds_are_closed()
    {
        var disk = new DeferredDisk(16 << 20);
        using var target = Target(output, () => disk, ShortDrain);
        var reactor = target.Reactors.Reactors[0];
        using var guest = ConnectWithReadInBackend(target, disk);
        var blk = guest.Blk[0];

        // The backend never answers within the drain timeout: GET_VRING_BASE gives up on the read.
        Assert.Equal([(ushort)1], guest.Stop());
        Assert.True(target.Log.Contains("it0: queue 0: in-flight requests did not complete within"));
        Assert.Equal(0, OnReactor(target, () => reactor.QueueCount));
        Assert.Equal(1, OnReactor(target, () => reactor.RetiringCount));

        // The backend finishes at last: its channel is released, and nothing reaches the ring the frontend took back.
        OnReactor(target, () =>
        {
            disk.ReleaseCompletions();
            return 0;
        });
        WaitUntil(() => OnReactor(target, () => disk.OpenChannels) == 0, "the abandoned queue is released");
        Assert.Equal(0, OnReactor(target, () => reactor.RetiringCount));
        Assert.False(guest.Queues[0].WaitForUsed(100));
        Assert.Equal(0, guest.SplitQueue(0).DeviceUsedIdx);

        // The device serves the guest's next start (a reboot) as usual.
        guest.ResetQueues();
        guest.Start();
        Assert.True(blk.TrySubmit(BlkRequestType.Flush, 0, [], 3));
        blk.Kick();
        WaitUntil(() => OnReactor(target, () => disk.Held) == 1, "the flush is in the backend");
        OnReactor(target, () =>
        {
            disk.ReleaseCompletions();
            return 0;
        });
        Assert.Equal(Ok, blk.WaitForCompletion(TimeSpan.FromSeconds(5)).Status);
    }
}
