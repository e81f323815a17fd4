using System.Runtime.InteropServices;
using BlkTarget.Storage.Interop;
using BlkTarget.Storage.Rbd;
using BlkTarget.Storage.Transfer;
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
internal sealed unsafe class NbdChannel : IBlockChannel, IIoCompletionTarget
{
    private const int ENOTCONN = 107;

    private enum Step : byte { None, Data, Flush, Discard, WriteZeroes, FlushAfterWrite }

    private struct Operation
    {
        public ulong Tag;
        public BlockOperation Kind;
        public BlockRequestFlags Flags;
        public Step Step;
        /// <summary>Commands handed to libnbd (plus the issuer's hold while issuing), not yet completed.</summary>
        public int Pending;
        /// <summary>The first error (errno) of the step's commands.</summary>
        public int Error;
        public ulong Offset;
        public ulong Length;
        public IoVec* Iov;
        public int IovCount;
        public NbdConnection? Connection;
    }

    private static readonly object RegistryGate = new();
    private static volatile NbdChannel?[] s_registry = [];

    private readonly NbdDisk _disk;
    private readonly NbdLink _link;
    private readonly IoContext _io;
    private readonly IBlockCompletionSink _sink;
    private readonly ILogger _log;
    private readonly Operation[] _ops;
    private readonly SlotStack _slots;
    private readonly CompletionInbox _inbox;
    private readonly int _target;
    private readonly int _thread = Environment.CurrentManagedThreadId;
    private long _errors;
    private bool _faulted;
    private bool _disposed;
    private bool _released;

    public NbdChannel(NbdDisk disk, NbdLink link, IoContext io, IBlockCompletionSink sink, int maxInFlight, ILogger log)
    {
        _disk = disk;
        _link = link;
        _io = io;
        _sink = sink;
        _log = log;
        _ops = new Operation[maxInFlight];
        _slots = new SlotStack(maxInFlight);
        _inbox = new CompletionInbox(maxInFlight);
        Id = Register(this);
        _target = io.AddTarget(this);
        io.RequestPolling(this);
    }

    /// <summary>This channel's index in the process-wide registry (the high half of its commands' user data).</summary>
    public int Id { get; }

    public int InFlight => _slots.InUse;

    private static int Register(NbdChannel channel)
    {
        lock (RegistryGate)
        {
            var table = s_registry;
            int id = Array.IndexOf(table, null);
            var next = id < 0 ? new NbdChannel?[table.Length + 1] : (NbdChannel?[])table.Clone();
            if (id < 0)
            {
                table.CopyTo(next, 0);
                id = table.Length;
            }
            next[id] = channel;
            s_registry = next;
            return id;
        }
    }

    /// <summary>Frees the registry index; only once no command of the channel is outstanding (it may be reused).</summary>
    private static void Unregister(int id)
    {
        lock (RegistryGate)
        {
            var next = (NbdChannel?[])s_registry.Clone();
            next[id] = null;
            s_registry = next;
        }
    }

    public void WakeReactor() => _io.Wake();

    public void Submit(in BlockRequest request)
    {
        var status = RequestValidation.Check(request, _disk.Info);
        if (status != BlockStatus.Ok || _faulted || _disposed || !_slots.TryTake(out int index))
        {
            _sink.Complete(request.Tag, status != BlockStatus.Ok ? status : BlockStatus.IoError);
            return;
        }
        ref Operation op = ref _ops[index];
        op = new Operation
        {
            Tag = request.Tag, Kind = request.Operation, Flags = request.Flags, Offset = request.Offset, Length = request.Length,
            Iov = request.Iov, IovCount = request.IovCount,
        };
        switch (request.Operation)
        {
            case BlockOperation.Read:
            case BlockOperation.Write:
                if (RequestValidation.IovBytes(request.Iov, request.IovCount) != request.Length)
                {
                    Finish(index, BlockStatus.IoError);
                    return;
                }
                op.Step = Step.Data;
                break;
            case BlockOperation.Flush:
                // A server without FLUSH has no volatile cache to flush (nothing advertised one to the guest).
                if (!_disk.CanFlush)
                {
                    Finish(index, BlockStatus.Ok);
                    return;
                }
                op.Step = Step.Flush;
                break;
            case BlockOperation.Discard:
                op.Step = Step.Discard;
                break;
            default:
                op.Step = Step.WriteZeroes;
                break;
        }
        if (op.Step is not Step.Flush && op.Length == 0)
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
    /// <see cref="Operation.Pending"/> while it issues, so that commands completing at once (or refused) cannot finish
    /// the request under it; when it lets go last, the request is handled here.</summary>
    private void Issue(int index)
    {
        ref Operation op = ref _ops[index];
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
        op.Connection = conn;
        op.Error = 0;
        op.Pending = 1;
        try
        {
            IssueOn(h, conn, index, ref op);
        }
        finally
        {
            conn.Handle.Exit();
        }
        if (!_link.IsDriver(this)) _link.WakeDriver();
        if (Interlocked.Decrement(ref op.Pending) == 0) Handle(index);
    }

    private void IssueOn(nint h, NbdConnection conn, int index, ref Operation op)
    {
        var callback = new CompletionCallback
        {
            Callback = &OnCommandCompleted,
            UserData = (nint)(((ulong)(uint)Id << 32) | (uint)index),
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
        Interlocked.Increment(ref op.Pending);
        Interlocked.Increment(ref conn.InFlight);
    }

    /// <summary>libnbd refused a command (it never calls the callback then): undo its count, keep its error, and notice
    /// a connection that died.</summary>
    private void Refused(nint h, NbdConnection conn, ref Operation op)
    {
        int errno = nbd_get_errno();
        string message = LastError;
        Interlocked.Decrement(ref conn.InFlight);
        Interlocked.CompareExchange(ref op.Error, errno > 0 ? errno : Errno.EIO, 0);
        Interlocked.Decrement(ref op.Pending);
        if (nbd_aio_is_dead(h) != 0 || nbd_aio_is_closed(h) != 0) _link.MarkDead(conn, message);
    }

    /// <summary>libnbd's completion callback (any command of any nbd channel): on the thread driving the socket, under
    /// libnbd's lock, so it calls no libnbd function; must not throw into native code. Returns 1: retired.</summary>
    [UnmanagedCallersOnly]
    private static int OnCommandCompleted(nint userData, int* error)
    {
        try
        {
            var table = s_registry;
            int id = (int)((ulong)userData >> 32);
            if (id < table.Length && table[id] is { } channel) channel.CommandCompleted((int)(uint)userData, *error);
        }
        catch (Exception)
        {
            // Nothing here can throw short of a bug; an exception must not unwind through libnbd.
        }
        return 1;
    }

    private void CommandCompleted(int index, int error)
    {
        ref Operation op = ref _ops[index];
        if (op.Connection is { } conn) Interlocked.Decrement(ref conn.InFlight);
        if (error != 0) Interlocked.CompareExchange(ref op.Error, error, 0);
        if (Interlocked.Decrement(ref op.Pending) != 0) return;
        if (_inbox.Post(index, 0) && Environment.CurrentManagedThreadId != _thread) _io.Wake();
    }

    /// <summary>The step's last command came back (on this channel's reactor).</summary>
    private void Handle(int index)
    {
        ref Operation op = ref _ops[index];
        op.Connection = null;
        if (_faulted || _disposed)
        {
            Release(index);
            return;
        }
        if (op.Error != 0)
        {
            Fail(index, -op.Error);
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

    /// <summary>Drives the link when this channel is its driver, then handles the slots whose commands came back.</summary>
    public int OnPoll()
    {
        int work = _link.Drive(this, _io);
        for (int slot = _inbox.TakeAll(); slot >= 0;)
        {
            int next = _inbox.Next(slot);
            try
            {
                Handle(slot);
            }
            catch (Exception e)
            {
                OnFault(e);
            }
            slot = next;
            work++;
        }
        if (_disposed && _slots.InUse == 0) ReleaseResources();
        return work;
    }

    public void OnIoCompleted(ulong tag, int result) =>
        throw new InvalidOperationException("an nbd channel submits nothing to the io_uring");

    public void OnSqeAvailable(ulong tag) =>
        throw new InvalidOperationException("an nbd channel waits for no submission entry");

    /// <param name="result">-errno.</param>
    private void Fail(int index, int result)
    {
        int errno = -result;
        LogError(_ops[index], Errno.Describe("nbd", errno));
        Finish(index, errno == Errno.ENOSPC ? BlockStatus.NoSpace : BlockStatus.IoError);
    }

    private void Finish(int index, BlockStatus status)
    {
        ulong tag = _ops[index].Tag;
        Release(index);
        if (!_faulted) _sink.Complete(tag, status);
    }

    private void Release(int index)
    {
        _ops[index] = default;
        _slots.Return(index);
    }

    private void LogError(in Operation op, string error)
    {
        long count = ++_errors;
        // The first errors and then every thousandth: a server that is down cannot flood the log.
        if (count <= 10 || count % 1000 == 0)
            _log.LogError("nbd {Uri}: {Operation} at offset {Offset} ({Length} bytes) failed: {Error} (error #{Count})",
                _disk.Options.Uri, op.Kind, op.Offset, op.Length, error, count);
    }

    public void Cancel()
    {
        if (_faulted) return;
        _faulted = true;
        ReleaseIdleSlots();
    }

    public void OnFault(Exception error)
    {
        if (_faulted) return;
        Cancel();
        _sink.ChannelFaulted(error);
    }

    /// <summary>Frees the slots with nothing in libnbd (in this channel every taken slot has commands outstanding
    /// between two reactor steps, so this only matters for a fault in the middle of handling).</summary>
    private void ReleaseIdleSlots()
    {
        for (int i = 0; i < _ops.Length; i++)
            if (_ops[i].Step != Step.None && Volatile.Read(ref _ops[i].Pending) == 0 && _ops[i].Connection is null) Release(i);
    }

    /// <summary>Closes the channel. Commands libnbd still holds keep their slots (and the guest buffers they point at)
    /// until they come back; the channel keeps driving its link until then, and leaves it after the last one.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (_slots.InUse == 0) ReleaseResources();
    }

    private void ReleaseResources()
    {
        if (_released) return;
        _released = true;
        _io.StopPolling(this);
        _io.RemoveTarget(_target);
        _link.Detach(this, _io);
        Unregister(Id);
    }
}
