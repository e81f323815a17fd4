using System.Runtime.InteropServices;
using BlkTarget.Storage.IoUring;
using Microsoft.Win32.SafeHandles;

namespace BlkTarget.Storage.Tests;

/// <summary>The io_uring binding against temp files: data, batching, errors, registered files, eventfd.</summary>
public sealed unsafe class IoUringTests : IDisposable
{
    private readonly string _path = Path.Combine(Path.GetTempPath(), $"uring-{Guid.NewGuid():N}.bin");
    private readonly IoUring.IoUring _ring = IoUring.IoUring.Create(64);
    private readonly SafeFileHandle _file;

    public IoUringTests()
    {
        _file = File.OpenHandle(_path, FileMode.CreateNew, FileAccess.ReadWrite);
        RandomAccess.Write(_file, Enumerable.Range(0, 8192).Select(i => (byte)(i * 7)).ToArray(), 0);
    }

    private int Fd => (int)_file.DangerousGetHandle();

    private IoUringNative.Cqe WaitOne()
    {
        // io_uring_enter may return after submitting but before the wait is satisfied (a signal), so wait in a loop.
        IoUringNative.Cqe cqe;
        int attempts = 0;
        while (!_ring.TryPeekCompletion(out cqe))
        {
            Assert.True(++attempts < 1000, "no completion arrived");
            _ring.Submit(waitFor: 1);
        }
        _ring.AdvanceCompletion();
        return cqe;
    }

    [Fact]
    public void Readv_reads_file_data_into_several_buffers()
    {
        var a = new byte[1000];
        var b = new byte[3096];
        fixed (byte* pa = a, pb = b)
        {
            var iov = stackalloc IoVec[2] { new(pa, 1000), new(pb, 3096) };
            IoUring.IoUring.PrepareReadv(_ring.NextSqe(), Fd, iov, 2, 4096, 17, fixedFile: false);
            var cqe = WaitOne();
            Assert.Equal(17UL, cqe.UserData);
            Assert.Equal(4096, cqe.Res);
        }
        Assert.Equal(unchecked((byte)(4096 * 7)), a[0]);
        Assert.Equal(unchecked((byte)(8191 * 7)), b[^1]);
    }

    [Fact]
    public void Writev_then_fsync_persist_data()
    {
        var data = Enumerable.Repeat((byte)0x5A, 512).ToArray();
        fixed (byte* p = data)
        {
            var iov = new IoVec(p, 512);
            IoUring.IoUring.PrepareWritev(_ring.NextSqe(), Fd, &iov, 1, 512, 1, fixedFile: false);
            Assert.Equal(512, WaitOne().Res);
        }
        IoUring.IoUring.PrepareFsync(_ring.NextSqe(), Fd, dataOnly: true, 2, fixedFile: false);
        Assert.Equal(0, WaitOne().Res);
        var back = new byte[512];
        RandomAccess.Read(_file, back, 512);
        Assert.Equal(data, back);
    }

    [Fact]
    public void A_read_past_end_of_file_is_short()
    {
        var buffer = new byte[4096];
        fixed (byte* p = buffer)
        {
            var iov = new IoVec(p, 4096);
            IoUring.IoUring.PrepareReadv(_ring.NextSqe(), Fd, &iov, 1, 8192 - 100, 3, fixedFile: false);
            Assert.Equal(100, WaitOne().Res);
            IoUring.IoUring.PrepareReadv(_ring.NextSqe(), Fd, &iov, 1, 1 << 20, 4, fixedFile: false);
            Assert.Equal(0, WaitOne().Res);
        }
    }

    [Fact]
    public void A_closed_descriptor_completes_with_ebadf()
    {
        var buffer = new byte[512];
        fixed (byte* p = buffer)
        {
            var iov = new IoVec(p, 512);
            IoUring.IoUring.PrepareReadv(_ring.NextSqe(), 1_000_000, &iov, 1, 0, 5, fixedFile: false);
            Assert.Equal(-9, WaitOne().Res);    // -EBADF
        }
    }

    [Fact]
    public void An_invalid_operation_completes_with_einval()
    {
        var sqe = _ring.NextSqe();
        IoUring.IoUring.PrepareFsync(sqe, Fd, dataOnly: false, 6, fixedFile: false);
        sqe->OpFlags = 0xFFFF;                  // unknown fsync flags
        Assert.Equal(-22, WaitOne().Res);       // -EINVAL
    }

    [Fact]
    public void Fallocate_punches_a_hole_that_reads_as_zeros()
    {
        const int PunchHoleKeepSize = 0x02 | 0x01;
        IoUring.IoUring.PrepareFallocate(_ring.NextSqe(), Fd, PunchHoleKeepSize, 4096, 4096, 7, fixedFile: false);
        Assert.Equal(0, WaitOne().Res);
        var back = new byte[4096];
        RandomAccess.Read(_file, back, 4096);
        Assert.All(back, b => Assert.Equal(0, b));
        Assert.Equal(8192, new FileInfo(_path).Length);
    }

    [Fact]
    public void Registered_files_are_used_by_slot()
    {
        _ring.RegisterFileTable(4);
        _ring.SetFile(2, Fd);
        var buffer = new byte[16];
        fixed (byte* p = buffer)
        {
            var iov = new IoVec(p, 16);
            IoUring.IoUring.PrepareReadv(_ring.NextSqe(), 2, &iov, 1, 16, 8, fixedFile: true);
            Assert.Equal(16, WaitOne().Res);
            IoUring.IoUring.PrepareReadv(_ring.NextSqe(), 3, &iov, 1, 16, 9, fixedFile: true);   // empty slot
            Assert.Equal(-9, WaitOne().Res);
        }
        Assert.Equal(unchecked((byte)(16 * 7)), buffer[0]);
    }

    [Fact]
    public void A_batch_is_submitted_with_one_enter_and_all_complete()
    {
        for (ulong i = 0; i < 32; i++) IoUring.IoUring.PrepareNop(_ring.NextSqe(), i);
        Assert.Equal(32u, _ring.PendingSubmissions);
        Assert.Equal(32, _ring.Submit(waitFor: 32));
        Assert.Equal(0u, _ring.PendingSubmissions);
        var seen = new HashSet<ulong>();
        for (int attempts = 0; seen.Count < 32 && attempts < 1000; attempts++)
        {
            while (_ring.TryPeekCompletion(out var cqe))
            {
                seen.Add(cqe.UserData);
                _ring.AdvanceCompletion();
            }
            if (seen.Count < 32) _ring.Submit(waitFor: 1);
        }
        Assert.Equal(32, seen.Count);
    }

    [Fact]
    public void A_full_submission_queue_returns_no_sqe_until_submitted()
    {
        using var small = IoUring.IoUring.Create(4);
        int taken = 0;
        while (small.NextSqe() is var sqe && sqe != null)
        {
            IoUring.IoUring.PrepareNop(sqe, (ulong)taken);
            taken++;
        }
        Assert.Equal((int)small.SqEntries, taken);
        small.Submit();
        Assert.True(small.NextSqe() != null);
    }

    [Fact]
    public void Context_wakes_its_eventfd_and_routes_completions_to_the_submitting_target()
    {
        using var context = new IoContext(16);
        var target = new Recorder();
        int index = context.AddTarget(target);
        var sqe = context.TryNextSqe(index);
        IoUring.IoUring.PrepareNop(sqe, IoContext.UserData(index, 99));
        Assert.Equal(1, context.InFlight);
        // Wait for the eventfd the way a sleeping reactor would, then reap.
        context.Ring.Submit();
        Assert.True(WaitReadable(context.WakeFd, 2000), "io_uring did not signal the eventfd");
        context.ClearWake();
        Assert.Equal(1, context.Poll());
        Assert.Equal([(99UL, 0)], target.Seen);
        Assert.Equal(0, context.InFlight);
    }

    [Fact]
    public void Operations_beyond_the_completion_ring_wait_for_an_sqe_and_none_is_lost()
    {
        // 8 SQEs, 16 CQEs: 200 operations at once must all complete, none failing for lack of an entry.
        using var context = new IoContext(8);
        var target = new Recorder();
        int index = context.AddTarget(target);
        target.Issue = tag =>
        {
            var sqe = context.TryNextSqe(index);
            if (sqe == null)
            {
                context.WaitForSqe(index, tag);
                return;
            }
            IoUring.IoUring.PrepareNop(sqe, IoContext.UserData(index, tag));
        };
        for (ulong tag = 0; tag < 200; tag++) target.Issue(tag);
        Assert.True(context.InFlight <= context.KernelCapacity, $"{context.InFlight} operations in the kernel, capacity {context.KernelCapacity}");
        for (int i = 0; i < 10_000 && target.Seen.Count < 200; i++) context.Poll();
        Assert.Equal(Enumerable.Range(0, 200).Select(t => ((ulong)t, 0)).ToHashSet(), target.Seen.ToHashSet());
        Assert.Equal(0, context.InFlight);
    }

    [Fact]
    public void A_target_with_outstanding_operations_cannot_be_removed_so_its_index_is_never_reused_early()
    {
        using var context = new IoContext(16);
        var first = new Recorder();
        int index = context.AddTarget(first);
        IoUring.IoUring.PrepareNop(context.TryNextSqe(index), IoContext.UserData(index, 5));
        Assert.Throws<InvalidOperationException>(() => context.RemoveTarget(index));
        while (first.Seen.Count == 0) context.Poll();
        context.RemoveTarget(index);
        var second = new Recorder();
        Assert.Equal(index, context.AddTarget(second));
        Assert.Empty(second.Seen);
    }

    [Fact]
    public void A_throwing_target_is_faulted_alone_and_the_context_keeps_serving_the_others()
    {
        using var context = new IoContext(16);
        var bad = new Recorder { Throw = true };
        var good = new Recorder();
        int badIndex = context.AddTarget(bad), goodIndex = context.AddTarget(good);
        IoUring.IoUring.PrepareNop(context.TryNextSqe(badIndex), IoContext.UserData(badIndex, 1));
        IoUring.IoUring.PrepareNop(context.TryNextSqe(goodIndex), IoContext.UserData(goodIndex, 2));
        for (int i = 0; i < 1000 && (good.Seen.Count == 0 || bad.Fault is null); i++) context.Poll();
        Assert.NotNull(bad.Fault);
        Assert.Equal([(2UL, 0)], good.Seen);
        Assert.Equal(0, context.InFlight);
    }

    [Fact]
    public void Completions_posted_by_another_thread_wake_the_context_and_reach_the_target()
    {
        using var context = new IoContext(16);
        var target = new Recorder();
        int index = context.AddTarget(target);
        context.BeginPosted(index);
        Assert.Equal(1, context.InFlight);
        var helper = new Thread(() => context.PostCompletion(index, 7, -5));
        helper.Start();
        Assert.True(WaitReadable(context.WakeFd, 2000), "a posted completion did not wake the context");
        helper.Join();
        context.ClearWake();
        context.Poll();
        Assert.Equal([(7UL, -5)], target.Seen);
        Assert.Equal(0, context.InFlight);
    }

    private sealed class Recorder : IIoCompletionTarget
    {
        public readonly List<(ulong, int)> Seen = [];
        public Action<ulong> Issue = _ => { };
        public bool Throw;
        public Exception? Fault;

        public void OnIoCompleted(ulong tag, int result)
        {
            if (Throw) throw new InvalidOperationException("completion handler bug");
            Seen.Add((tag, result));
        }

        public void OnSqeAvailable(ulong tag) => Issue(tag);
        public int OnPoll() => 0;
        public void OnFault(Exception error) => Fault = error;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    [DllImport("libc")]
    private static extern int poll(PollFd* fds, ulong count, int timeout);

    private static bool WaitReadable(int fd, int timeoutMs)
    {
        var p = new PollFd { Fd = fd, Events = 1 };
        return poll(&p, 1, timeoutMs) == 1;
    }

    public void Dispose()
    {
        _ring.Dispose();
        _file.Dispose();
        File.Delete(_path);
    }
}
