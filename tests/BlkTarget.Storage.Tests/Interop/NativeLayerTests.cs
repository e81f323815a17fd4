using BlkTarget.Storage.Interop;

namespace BlkTarget.Storage.Tests.Interop;

/// <summary>The one native layer: fd ownership, eventfd, errno reporting, mappings.</summary>
public sealed class NativeLayerTests
{
    /// <summary>What /proc/self/fd/N points at, or null when N is not open. A memfd shows as "/memfd:NAME (deleted)",
    /// so a unique name tells our descriptor apart from one that reused its number.</summary>
    private static string? Target(int fd)
    {
        try { return new FileInfo($"/proc/self/fd/{fd}").LinkTarget; }
        catch (IOException) { return null; }
    }

    [Fact]
    public void Disposing_an_owned_fd_closes_the_descriptor()
    {
        string name = $"owned-fd-{Guid.NewGuid():N}";
        var owner = MemFd.Create(name, 4096);
        int fd = owner.Fd;
        Assert.Contains(name, Target(fd));

        owner.Dispose();
        owner.Dispose();   // a second dispose must not close whatever reuses the number

        Assert.DoesNotContain(name, Target(fd) ?? "");
        Assert.True(owner.IsClosed);
    }

    [Fact]
    public void The_invalid_owner_holds_fd_minus_one_and_closes_nothing()
    {
        using var invalid = OwnedFd.Invalid;
        Assert.True(invalid.IsInvalid);
        Assert.Equal(-1, invalid.Fd);
    }

    [Fact]
    public void A_failed_call_becomes_an_IOException_carrying_errno_and_its_text()
    {
        // ftruncate to a negative length fails with EINVAL (22).
        var e = Assert.Throws<IOException>(() => MemFd.Create("negative", -1));
        Assert.Equal(22, e.HResult);
        Assert.Equal("ftruncate(memfd) failed: Invalid argument (errno 22)", e.Message);
    }

    [Fact]
    public void FromResult_refuses_a_negative_result_with_the_calls_errno()
    {
        // close(-1) fails with EBADF (9) without touching any descriptor.
        var e = Assert.Throws<IOException>(() => OwnedFd.FromResult(FileNative.close(-1), "close(-1)"));
        Assert.Equal(9, e.HResult);
        Assert.Equal("close(-1) failed: Bad file descriptor (errno 9)", e.Message);
    }

    [Fact]
    public void An_eventfd_counts_signals_until_drained()
    {
        using var fd = EventFd.Create();
        Assert.Equal(0UL, EventFd.Drain(fd.Fd));   // non-blocking: nothing pending reads as 0
        EventFd.Signal(fd.Fd);
        EventFd.Signal(fd.Fd);
        EventFd.Signal(fd.Fd);
        Assert.Equal(3UL, EventFd.Drain(fd.Fd));
        Assert.Equal(0UL, EventFd.Drain(fd.Fd));
    }

    [Fact]
    public async Task Waiting_on_a_blocking_eventfd_returns_once_another_thread_signals_it()
    {
        using var fd = EventFd.Create(nonBlocking: false);
        var waiter = Task.Run(() => EventFd.Wait(fd.Fd));
        await Task.Delay(50);
        Assert.False(waiter.IsCompleted);
        EventFd.Signal(fd.Fd);
        Assert.True(await waiter.WaitAsync(TimeSpan.FromSeconds(5)));
    }

    [Fact]
    public void Waiting_on_a_bad_descriptor_fails_instead_of_blocking() => Assert.False(EventFd.Wait(-1));

    [Fact]
    public void A_received_blocking_eventfd_can_be_made_non_blocking()
    {
        using var fd = EventFd.Create(nonBlocking: false);
        EventFd.SetNonBlocking(fd.Fd);
        Assert.Equal(0UL, EventFd.Drain(fd.Fd));   // would block forever without O_NONBLOCK
    }

    [Fact]
    public unsafe void Zeroing_anonymous_memory_clears_exactly_the_range_across_partial_and_whole_pages()
    {
        using var memory = MappedMemory.MapAnonymous(4 * 4096);
        var all = new Span<byte>(memory.Pointer, 4 * 4096);
        all.Fill(0xA5);

        memory.Zero(100, 3 * 4096);   // part of page 0, pages 1-2 whole, part of page 3

        Assert.True(all[..100].IndexOfAnyExcept((byte)0xA5) < 0);
        Assert.True(all.Slice(100, 3 * 4096).IndexOfAnyExcept((byte)0) < 0);
        Assert.True(all[(100 + 3 * 4096)..].IndexOfAnyExcept((byte)0xA5) < 0);
    }

    [Fact]
    public unsafe void Zeroing_a_shared_mapping_zeroes_the_file_not_only_this_view()
    {
        // MADV_DONTNEED would only drop this view's pages of a shared mapping; the data would come back.
        using var fd = MemFd.Create("shared-zero", 2 * 4096);
        using var a = MappedMemory.MapShared(fd.Fd, 2 * 4096);
        using var b = MappedMemory.MapShared(fd.Fd, 2 * 4096);
        new Span<byte>(a.Pointer, 2 * 4096).Fill(0x5A);

        a.Zero(0, 2 * 4096);

        Assert.True(new Span<byte>(a.Pointer, 2 * 4096).IndexOfAnyExcept((byte)0) < 0);
        Assert.True(new Span<byte>(b.Pointer, 2 * 4096).IndexOfAnyExcept((byte)0) < 0);
    }

    [Fact]
    public void A_zero_length_mapping_is_refused()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => MappedMemory.MapAnonymous(0));
        using var fd = MemFd.Create("empty", 4096);
        Assert.Throws<ArgumentOutOfRangeException>(() => MappedMemory.MapShared(fd.Fd, 0));
    }
}
