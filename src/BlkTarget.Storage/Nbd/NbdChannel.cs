using System.Runtime.InteropServices;
using BlkTarget.Storage.Interop;
using BlkTarget.Storage.Network;
using Microsoft.Extensions.Logging;
using static BlkTarget.Storage.Interop.NbdNative;

namespace BlkTarget.Storage.Nbd;

/// <summary>
/// One reactor's path into an <see cref="NbdDisk"/>, over one of its <see cref="NbdLink"/>s.
/// <para>
/// Vectors: an NBD command carries one contiguous buffer, so a read or write becomes one command per run of
/// contiguous iovecs (guest buffers that follow each other in our address space are merged; a run longer than the
/// server's maximum is split), all issued at once, straight from and into guest memory. A bounce buffer would cost a
/// copy of every byte and a preallocated buffer of the largest request per slot; extra commands cost 28 header bytes
/// each on the socket and are pipelined.
/// </para>
/// <para>
/// Completions: every command gets a completion callback that is a static unmanaged function pointer (no delegate, no
/// GC handle, nothing allocated) with the channel's registry index and the slot as its user data, and retires the
/// command itself. libnbd calls it on the thread driving the socket, under its lock; it only counts down the slot's
/// commands and, at the last one, posts the slot to the channel's lock-free <see cref="CompletionInbox"/> (waking the
/// channel's reactor when that is another thread). Reaping by cookie (nbd_aio_peek_command_completed) was not used: on
/// a connection shared by several reactors, a reply can be reaped by the driving reactor before the issuing one has
/// even learnt the cookie, which a cookie-to-slot table could only cover with a lock.
/// </para>
/// <para>
/// Errors: a failed command fails its request with IOERR (NoSpace for ENOSPC); a dead connection fails requests at
/// once and asks its link for a reconnect. Slots are allocated once; nothing is allocated, locked or awaited per request.
/// </para>
/// </summary>
internal sealed unsafe class NbdChannel : NetworkChannel<NbdChannel.Commands>
{
    private const int ENOTCONN = 107;

    /// <summary>The libnbd commands of one request's current step.</summary>
    internal struct Commands
    {
        /// <summary>Commands handed to libnbd (plus the issuer's hold while issuing), not yet completed.</summary>
        public int Pending;
        /// <summary>The first error (errno) of the step's commands.</summary>
        public int Error;
        public NbdConnection? Connection;
    }

    /// <summary>Every nbd channel, process-wide: libnbd's completion callback is one static function, which finds the
    /// channel by the high half of its user data.</summary>
    private static readonly ChannelTable<NbdChannel> s_registry = new();

    private readonly NbdDisk _disk;
    private readonly NbdLink _link;
    private readonly int _thread = Environment.CurrentManagedThreadId;

    public NbdChannel(NbdDisk disk, NbdLink link, IoContext io, IBlockCompletionSink sink, int maxInFlight, ILogger log)
        : base(disk, io, sink, maxInFlight, "nbd", log)
    {
        _disk = disk;
        _link = link;
        Id = s_registry.Add(this);
    }

    public void WakeReactor() => Io.Wake();

    protected override void Start(int index)
    {
        ref Operation op = ref Ops[index];
        // A server without FLUSH has no volatile cache to flush (nothing advertised one to the guest).
        if (op.Step is Step.Flush && !_disk.CanFlush)
        {
            Finish(index, BlockStatus.Ok);
            return;
        }
        if (op.Step is Step.Discard && !_disk.Info.SupportsDiscard || op.Step is Step.WriteZeroes && !_disk.Info.SupportsWriteZeroes)
        {
            Finish(index, BlockStatus.Unsupported);
            return;
        }
        Issue(index);
    }

    /// <summary>Hands the operation's current step to libnbd as one or more commands. The issuer holds one count of
    /// <see cref="Commands.Pending"/> while it issues, so that commands completing at once (or refused) cannot finish
    /// the request under it; when it lets go last, the request is handled here.</summary>
    private void Issue(int index)
    {
        ref Operation op = ref Ops[index];
        var conn = _link.Current;
        if (conn is null || conn.Dead)
        {
            _link.RequestReconnect(conn);
            Fail(index, conn is null ? -Errno.ENXIO : -ENOTCONN);
            return;
        }
        nint h = conn.Handle.TryEnter();
        if (h == 0)
        {
            Fail(index, -Errno.ENXIO);     // the disk was closed under its channel
            return;
        }
        op.Backend.Connection = conn;
        op.Backend.Error = 0;
        op.Backend.Pending = 1;
        try
        {
            IssueOn(h, conn, index, ref op);
        }
        finally
        {
            conn.Handle.Exit();
        }
        if (!_link.IsDriver(this)) _link.WakeDriver();
        if (Interlocked.Decrement(ref op.Backend.Pending) == 0) Handle(index, 0);
    }

    private void IssueOn(nint h, NbdConnection conn, int index, ref Operation op)
    {
        var callback = new CompletionCallback
        {
            Callback = &OnCommandCompleted,
            UserData = UserData(index),
        };
        switch (op.Step)
        {
            case Step.Data:
                IssueData(h, conn, ref op, callback);
                return;
            case Step.Flush:
            case Step.FlushAfterWrite:
                Begin(conn, ref op);
                if (nbd_aio_flush(h, callback, 0) < 0) Refused(h, conn, ref op);
                return;
            case Step.Discard:
                Begin(conn, ref op);
                if (nbd_aio_trim(h, op.Length, op.Offset, callback, 0) < 0) Refused(h, conn, ref op);
                return;
            case Step.WriteZeroes:
                uint flags = ((op.Flags & BlockRequestFlags.Unmap) == 0 ? CMD_FLAG_NO_HOLE : 0) |
                    ((op.Flags & BlockRequestFlags.Fua) != 0 && _disk.CanFua ? CMD_FLAG_FUA : 0);
                Begin(conn, ref op);
                if (nbd_aio_zero(h, op.Length, op.Offset, callback, flags) < 0) Refused(h, conn, ref op);
                return;
        }
    }

    /// <summary>One command per run of contiguous iovecs, at most the server's maximum each.</summary>
    private void IssueData(nint h, NbdConnection conn, ref Operation op, CompletionCallback callback)
    {
        bool read = op.Kind == BlockOperation.Read;
        uint flags = !read && (op.Flags & BlockRequestFlags.Fua) != 0 && _disk.CanFua ? CMD_FLAG_FUA : 0;
        ulong max = conn.MaxCommandBytes;
        ulong offset = op.Offset;
        IoVec* iov = op.Iov;
        int count = op.IovCount;
        for (int i = 0; i < count;)
        {
            byte* start = iov[i].Base;
            ulong length = iov[i].Length;
            for (i++; i < count && iov[i].Base == start + length; i++) length += iov[i].Length;
            while (length > 0)
            {
                ulong piece = Math.Min(length, max);
                Begin(conn, ref op);
                long cookie = read
                    ? nbd_aio_pread(h, start, (nuint)piece, offset, callback, 0)
                    : nbd_aio_pwrite(h, start, (nuint)piece, offset, callback, flags);
                if (cookie < 0)
                {
                    Refused(h, conn, ref op);
                    return;
                }
                start += piece;
                offset += piece;
                length -= piece;
            }
        }
    }

    private static void Begin(NbdConnection conn, ref Operation op)
    {
        Interlocked.Increment(ref op.Backend.Pending);
        Interlocked.Increment(ref conn.InFlight);
    }

    /// <summary>libnbd refused a command (it never calls the callback then): undo its count, keep its error, and notice
    /// a connection that died.</summary>
    private void Refused(nint h, NbdConnection conn, ref Operation op)
    {
        int errno = nbd_get_errno();
        string message = LastError;
        Interlocked.Decrement(ref conn.InFlight);
        Interlocked.CompareExchange(ref op.Backend.Error, errno > 0 ? errno : Errno.EIO, 0);
        Interlocked.Decrement(ref op.Backend.Pending);
        if (nbd_aio_is_dead(h) != 0 || nbd_aio_is_closed(h) != 0) _link.MarkDead(conn, message);
    }

    /// <summary>libnbd's completion callback (any command of any nbd channel): on the thread driving the socket, under
    /// libnbd's lock, so it calls no libnbd function; must not throw into native code. Returns 1: retired.</summary>
    [UnmanagedCallersOnly]
    private static int OnCommandCompleted(nint userData, int* error)
    {
        try
        {
            if (s_registry[(int)((ulong)userData >> 32)] is { } channel) channel.CommandCompleted((int)(uint)userData, *error);
        }
        catch (Exception)
        {
            // Nothing here can throw short of a bug; an exception must not unwind through libnbd.
        }
        return 1;
    }

    private void CommandCompleted(int index, int error)
    {
        ref Operation op = ref Ops[index];
        if (op.Backend.Connection is { } conn) Interlocked.Decrement(ref conn.InFlight);
        if (error != 0) Interlocked.CompareExchange(ref op.Backend.Error, error, 0);
        if (Interlocked.Decrement(ref op.Backend.Pending) != 0) return;
        if (Post(index, 0) && Environment.CurrentManagedThreadId != _thread) Io.Wake();
    }

    /// <summary>The step's last command came back (on this channel's reactor; from <see cref="Issue"/> too, which only
    /// runs on a live channel). <paramref name="result"/> is unused: the commands' first error is kept in
    /// <see cref="Commands.Error"/>.</summary>
    protected override void Handle(int index, long result)
    {
        ref Operation op = ref Ops[index];
        op.Backend.Connection = null;
        if (op.Backend.Error != 0)
        {
            Fail(index, -op.Backend.Error);
            return;
        }
        bool fua = (op.Flags & BlockRequestFlags.Fua) != 0 && !_disk.CanFua && _disk.CanFlush;
        if (fua && op.Step is Step.Data && op.Kind == BlockOperation.Write || fua && op.Step is Step.WriteZeroes)
        {
            op.Step = Step.FlushAfterWrite;      // FUA on a server without it: durable once a flush completed after the write
            Issue(index);
            return;
        }
        Finish(index, BlockStatus.Ok);
    }

    /// <summary>Drives the link when this channel is its driver (libnbd's callbacks post what came back).</summary>
    protected override int PollLibrary() => _link.Drive(this, Io);

    /// <summary>In this channel every taken slot has commands outstanding between two reactor steps, so a slot is idle
    /// only after a fault in the middle of handling.</summary>
    protected override bool IsOutstanding(ref Operation op) =>
        Volatile.Read(ref op.Backend.Pending) != 0 || op.Backend.Connection is not null;

    protected override void LogFailure(in Operation op, string error, long count) =>
        Log.LogError("nbd {Uri}: {Operation} at offset {Offset} ({Length} bytes) failed: {Error} (error #{Count})",
            _disk.Options.Uri, op.Kind, op.Offset, op.Length, error, count);

    /// <summary>After the last command came back: the channel keeps driving its link until then, and leaves it now.</summary>
    protected override void OnClosed()
    {
        _link.Detach(this, Io);
        s_registry.Remove(Id);
    }
}
