namespace BlkTarget.Vhost.Tests;

public class SplitRingTests
{
    [Fact]
    public void Pops_heads_in_avail_order_and_reports_empty()
    {
        using var t = new TestRing();
        var ring = t.CreateRing();
        t.MakeAvailable(3);
        t.MakeAvailable(7);
        Assert.Equal(Queues.SplitRing.PopResult.Popped, ring.TryPop(out ushort a));
        Assert.Equal(Queues.SplitRing.PopResult.Popped, ring.TryPop(out ushort b));
        Assert.Equal(Queues.SplitRing.PopResult.Empty, ring.TryPop(out _));
        Assert.Equal((3, 7), (a, b));
        Assert.Equal(2, ring.LastAvailIdx);
    }

    [Fact]
    public void Avail_index_more_than_a_queue_ahead_is_corrupt()
    {
        using var t = new TestRing(size: 16);
        var ring = t.CreateRing();
        t.SetAvailIdx(17);
        Assert.Equal(Queues.SplitRing.PopResult.Corrupt, ring.TryPop(out _));
    }

    [Fact]
    public void Used_entries_become_visible_only_when_published()
    {
        using var t = new TestRing();
        var ring = t.CreateRing();
        ring.PushUsed(5, 513);
        Assert.Equal(0, t.UsedIdx);
        ring.PublishUsed();
        Assert.Equal(1, t.UsedIdx);
        Assert.Equal(5u, t.Used(0).Id);
        Assert.Equal(513u, t.Used(0).Len);
    }

    [Fact]
    public void Starts_from_the_given_base_and_the_used_index_in_memory()
    {
        using var t = new TestRing();
        t.SetAvailIdx(10);
        var first = t.CreateRing(lastAvail: 10);
        Assert.Equal(Queues.SplitRing.PopResult.Empty, first.TryPop(out _));
        first.PushUsed(1, 1);
        first.PublishUsed();
        var restarted = t.CreateRing(lastAvail: 10);
        Assert.Equal(1, restarted.UsedIdx);
    }

    [Fact]
    public void Without_event_idx_no_interrupt_flag_suppresses_signals_after_the_first()
    {
        using var t = new TestRing();
        var ring = t.CreateRing();
        t.SetAvailFlags(Queues.SplitRingLayout.AvailFlagNoInterrupt);
        ring.PushUsed(0, 1);
        ring.PublishUsed();
        Assert.True(ring.ShouldSignal());           // first signal after start is unconditional
        ring.PushUsed(1, 1);
        ring.PublishUsed();
        Assert.False(ring.ShouldSignal());
        t.SetAvailFlags(0);
        ring.PushUsed(2, 1);
        ring.PublishUsed();
        Assert.True(ring.ShouldSignal());
        Assert.False(ring.ShouldSignal());          // nothing new since
    }

    [Fact]
    public void With_event_idx_signals_only_when_used_event_is_crossed()
    {
        using var t = new TestRing();
        var ring = t.CreateRing(eventIdx: true);
        ring.PushUsed(0, 1);
        ring.PublishUsed();
        Assert.True(ring.ShouldSignal());
        t.SetUsedEvent(3);                           // guest wants an interrupt once entry 3 is used
        ring.PushUsed(1, 1);
        ring.PushUsed(2, 1);
        ring.PublishUsed();                          // used idx 3: entry 3 not yet used
        Assert.False(ring.ShouldSignal());
        ring.PushUsed(3, 1);
        ring.PublishUsed();                          // used idx 4 crosses 3
        Assert.True(ring.ShouldSignal());
    }

    [Fact]
    public void Enabling_notifications_writes_avail_event_or_clears_no_notify()
    {
        using var t = new TestRing();
        var plain = t.CreateRing();
        plain.DisableNotifications();
        Assert.Equal(1, t.UsedFlags);
        Assert.False(plain.EnableNotifications());
        Assert.Equal(0, t.UsedFlags);

        using var e = new TestRing();
        var withEvent = e.CreateRing(eventIdx: true);
        e.MakeAvailable(0);
        withEvent.TryPop(out _);
        Assert.False(withEvent.EnableNotifications());
        Assert.Equal(1, e.AvailEvent);
        e.MakeAvailable(1);
        Assert.True(withEvent.EnableNotifications());   // work arrived: must not sleep
    }

    [Fact]
    public void Rings_outside_memory_or_misaligned_are_refused()
    {
        using var t = new TestRing();
        var memory = t.Memory.Memory;
        Assert.Null(Queues.SplitRing.Create(memory, 0x10, t.UserAddr(0x1_0000_1000), t.UserAddr(0x1_0000_2000), 16, 0, false));
        Assert.Null(Queues.SplitRing.Create(memory, t.UserAddr(0x1_0000_0008), t.UserAddr(0x1_0000_1000), t.UserAddr(0x1_0000_2000), 16, 0, false));
        Assert.Null(Queues.SplitRing.Create(memory, t.UserAddr(0x1_0000_0000), t.UserAddr(0x1_0000_1000), t.UserAddr(0x1_0000_2000), 15, 0, false));
    }
}
