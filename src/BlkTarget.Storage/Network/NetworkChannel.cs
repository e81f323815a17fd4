using BlkTarget.Storage.Interop;
using BlkTarget.Storage.Transfer;
using Microsoft.Extensions.Logging;

namespace BlkTarget.Storage.Network;

/// <summary>
/// What the channels into a network client library share (librbd, libnbd): the library works straight on the
/// request's guest buffers, completes on a thread of its own choosing, and names the request that came back by a
/// 64-bit argument given with the call (<see cref="UserData"/>: this channel's <see cref="Id"/> and the slot).
/// <para>
/// Shared here: request slots allocated once (each with the backend's state of its calls, <typeparamref name="TBackend"/>),
/// validation and the request's first step, completions reaped on another thread handed to this channel's reactor
/// through its lock-free <see cref="CompletionInbox"/>, errors mapped to IOERR (NoSpace for a full medium) and logged
/// at a bounded rate, and the fault and shutdown paths: a faulted or disposed channel completes nothing more, but keeps
/// each slot (and the guest buffers it points at) until the library gave it back, and leaves its reactor only when
/// nothing of it is outstanding. Nothing is allocated, locked or awaited per request.
/// </para>
/// </summary>
/// <typeparam name="TBackend">What a backend tracks per request about the calls it has in the library.</typeparam>
internal abstract unsafe class NetworkChannel<TBackend> : IBlockChannel, IIoCompletionTarget where TBackend : struct
{
    /// <summary>What an operation is waiting for; decides how its next completion is handled.</summary>
    protected enum Step : byte
    {
        /// <summary>The slot is free.</summary>
        None,
        /// <summary>A read or write of the request's buffers.</summary>
        Data,
        /// <summary>A FLUSH request.</summary>
        Flush,
        Discard,
        WriteZeroes,
        /// <summary>The flush that makes a FUA write durable where the medium cannot write through.</summary>
        FlushAfterWrite,
    }

    /// <summary>One request in its preallocated slot.</summary>
    protected struct Operation
    {
        public ulong Tag;
        public BlockOperation Kind;
        public BlockRequestFlags Flags;
        public Step Step;
        /// <summary>Where the request starts (a backend that issues it in pieces: where the next piece starts).</summary>
        public ulong Offset;
        public ulong Length;
        /// <summary>The guest's buffers (a backend that issues them in pieces: those not issued yet).</summary>
        public IoVec* Iov;
        public int IovCount;
        public TBackend Backend;
    }

    private readonly IBlockDevice _device;
    private readonly IBlockCompletionSink _sink;
    private readonly string _library;
    private readonly SlotStack _slots;
    private readonly CompletionInbox _inbox;
    private readonly int _target;
    private long _errors;
    private bool _released;

    /// <param name="library">How errors name the library ("librbd", "nbd").</param>
    protected NetworkChannel(IBlockDevice device, IoContext io, IBlockCompletionSink sink, int maxInFlight, string library, ILogger log)
    {
        _device = device;
        Io = io;
        _sink = sink;
        _library = library;
        Log = log;
        Ops = new Operation[maxInFlight];
        _slots = new SlotStack(maxInFlight);
        _inbox = new CompletionInbox(maxInFlight);
        _target = io.AddTarget(this);
        // The library's completions do not come through the ring: every reactor round reaps them (OnPoll).
        io.RequestPolling(this);
    }

    /// <summary>This channel's index in the table completions are routed by (the high half of its calls' user data).</summary>
    public int Id { get; protected init; }

    public int InFlight => _slots.InUse;

    protected IoContext Io { get; }
    protected ILogger Log { get; }
    protected Operation[] Ops { get; }
    /// <summary>Set once a handler threw or the channel was cancelled: nothing more is issued or completed.</summary>
    protected bool Faulted { get; private set; }
    protected bool Disposed { get; private set; }

    /// <summary>The argument a library call of slot <paramref name="index"/> carries back to its completion.</summary>
    protected nint UserData(int index) => (nint)(((ulong)(uint)Id << 32) | (uint)index);

    public void Submit(in BlockRequest request)
    {
        var status = RequestValidation.Check(request, _device.Info);
        if (status != BlockStatus.Ok || Faulted || Disposed || !_slots.TryTake(out int index))
        {
            _sink.Complete(request.Tag, status != BlockStatus.Ok ? status : BlockStatus.IoError);
            return;
        }
        ref Operation op = ref Ops[index];
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
        Start(index);
    }

    /// <summary>Begins a valid, nonempty request (its <see cref="Operation.Step"/> set) in slot <paramref name="index"/>.</summary>
    protected abstract void Start(int index);

    /// <summary>The library's call(s) for slot <paramref name="index"/> came back, on this channel's reactor: issue the
    /// next step or finish the request. <paramref name="result"/>: what the completion carried.</summary>
    protected abstract void Handle(int index, long result);

    /// <summary>Lets the library make progress and handles what it completed for this channel (reactor thread);
    /// returns how much happened.</summary>
    protected abstract int PollLibrary();

    /// <summary>Whether the library still holds something of the operation (its slot and buffers must be kept).</summary>
    protected abstract bool IsOutstanding(ref Operation op);

    /// <summary>Called once when the channel is gone for good (after the last outstanding operation).</summary>
    protected abstract void OnClosed();

    /// <summary>Logs one failed request (<paramref name="count"/>: failures so far; called for a bounded share of them).</summary>
    protected abstract void LogFailure(in Operation op, string error, long count);

    /// <summary>Whether <paramref name="errno"/> means the medium is full (the request fails with NoSpace).</summary>
    protected virtual bool IsNoSpace(int errno) => errno == Errno.ENOSPC;

    /// <summary>A completion of this channel on its own reactor (reaped here or taken from the inbox).</summary>
    internal void Completed(int index, long result)
    {
        try
        {
            Handle(index, result);
        }
        catch (Exception e)
        {
            OnFault(e);
        }
    }

    /// <summary>Queues a completion reaped on another thread (any thread) for this channel's reactor. True when the
    /// inbox was empty before: the reactor may be asleep and must be woken.</summary>
    protected bool Post(int index, long result) => _inbox.Post(index, result);

    /// <summary>Polls the library, then handles what other threads reaped for this channel.</summary>
    public int OnPoll()
    {
        int work = PollLibrary();
        for (int slot = _inbox.TakeAll(); slot >= 0;)
        {
            int next = _inbox.Next(slot);
            Completed(slot, _inbox.Result(slot));
            slot = next;
            work++;
        }
        return work;
    }

    public void OnIoCompleted(ulong tag, int result) =>
        throw new InvalidOperationException($"{GetType().Name} submits nothing to the io_uring");

    public void OnSqeAvailable(ulong tag) =>
        throw new InvalidOperationException($"{GetType().Name} waits for no submission entry");

    /// <summary>Completes the operation with IOERR (NoSpace for a full medium) and logs the error.</summary>
    /// <param name="result">-errno.</param>
    protected void Fail(int index, int result)
    {
        int errno = -result;
        LogError(Ops[index], Errno.Describe(_library, errno));
        Finish(index, IsNoSpace(errno) ? BlockStatus.NoSpace : BlockStatus.IoError);
    }

    /// <summary>Ends the request in slot <paramref name="index"/> and reports it to the sink.</summary>
    protected void Finish(int index, BlockStatus status)
    {
        ulong tag = Ops[index].Tag;
        Release(index);
        if (!Faulted) _sink.Complete(tag, status);
    }

    /// <summary>Frees slot <paramref name="index"/> without reporting anything (fault and shutdown paths).</summary>
    protected void Release(int index)
    {
        Ops[index] = default;
        _slots.Return(index);
        if (Disposed && _slots.InUse == 0) ReleaseResources();
    }

    protected void LogError(in Operation op, string error)
    {
        long count = ++_errors;
        // The first errors and then every thousandth: a server or cluster that is down cannot flood the log.
        if (count <= 10 || count % 1000 == 0) LogFailure(op, error, count);
    }

    public void Cancel()
    {
        if (Faulted) return;
        Faulted = true;
        ReleaseIdleSlots();
    }

    /// <summary>A handler threw: stop like <see cref="Cancel"/>, and tell the sink (its queue stops too).</summary>
    public void OnFault(Exception error)
    {
        if (Faulted) return;
        Cancel();
        _sink.ChannelFaulted(error);
    }

    /// <summary>Frees every slot the library holds nothing of; the others go when their completion arrives.</summary>
    private void ReleaseIdleSlots()
    {
        for (int i = 0; i < Ops.Length; i++)
            if (Ops[i].Step != Step.None && !IsOutstanding(ref Ops[i])) Release(i);
    }

    /// <summary>Closes the channel. Requests the library still holds keep their slots (and the guest buffers they point
    /// at) until they come back; the channel leaves its routing table and its reactor after the last one, so its
    /// <see cref="Id"/> is never reused while a completion for it can still arrive.</summary>
    public void Dispose()
    {
        if (Disposed) return;
        Disposed = true;
        ReleaseIdleSlots();
        if (_slots.InUse == 0) ReleaseResources();
    }

    private void ReleaseResources()
    {
        if (_released) return;
        _released = true;
        Io.StopPolling(this);
        Io.RemoveTarget(_target);
        OnClosed();
    }
}
