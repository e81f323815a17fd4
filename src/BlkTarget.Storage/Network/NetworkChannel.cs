using BlkTarget.Storage.Interop;
using BlkTarget.Storage.Transfer;
using Microsoft.Extensions.Logging;

namespace BlkTarget.Storage.Network;

/// <summary>
/// What the channels into a network client library share (librbd, libnbd): the library works straight on the
/// request's guest buffers, completes on a thread of its own choosing, and names the request that came back by a
/// 64-bit argument given with the call (<see cref="UserData"/>: this channel's <see cref="Id"/> and the slot).
/// <para>
/// Shared here, on top of <see cref="SlotChannel"/>'s slots and fault and shutdown paths: each slot's request with the
/// backend's state of its calls (<typeparamref name="TBackend"/>), validation and the request's first step, completions
/// reaped on another thread handed to this channel's reactor through its lock-free <see cref="CompletionInbox"/>, errors
/// mapped to IOERR (NoSpace for a full medium), and leaving the reactor once the library gave every slot back.
/// Nothing is allocated, locked or awaited per request.
/// </para>
/// </summary>
/// <typeparam name="TBackend">What a backend tracks per request about the calls it has in the library.</typeparam>
internal abstract unsafe class NetworkChannel<TBackend> : SlotChannel, IIoCompletionTarget where TBackend : struct
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
    private readonly string _library;
    private readonly CompletionInbox _inbox;
    private readonly int _target;

    /// <param name="library">How errors name the library ("librbd", "nbd").</param>
    protected NetworkChannel(IBlockDevice device, IoContext io, IBlockCompletionSink sink, int maxInFlight, string library, ILogger log)
        : base(sink, maxInFlight)
    {
        _device = device;
        Io = io;
        _library = library;
        Log = log;
        Ops = new Operation[maxInFlight];
        _inbox = new CompletionInbox(maxInFlight);
        _target = io.AddTarget(this);
        // The library's completions do not come through the ring: every reactor round reaps them (OnPoll).
        io.RequestPolling(this);
    }

    /// <summary>This channel's index in the table completions are routed by (the high half of its calls' user data).</summary>
    public int Id { get; protected init; }

    protected IoContext Io { get; }
    protected ILogger Log { get; }
    protected Operation[] Ops { get; }

    /// <summary>The argument a library call of slot <paramref name="index"/> carries back to its completion.</summary>
    protected nint UserData(int index) => (nint)(((ulong)(uint)Id << 32) | (uint)index);

    public override void Submit(in BlockRequest request)
    {
        if (!TryAdmit(request, _device.Info, out int index)) return;
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

    /// <summary>The library's call(s) for slot <paramref name="index"/> came back, on this channel's reactor, which is
    /// neither faulted nor disposed: issue the next step or finish the request. <paramref name="result"/>: what the
    /// completion carried.</summary>
    protected abstract void Handle(int index, long result);

    /// <summary>Lets the library make progress and handles what it completed for this channel (reactor thread);
    /// returns how much happened.</summary>
    protected abstract int PollLibrary();

    /// <summary>Whether the library still holds something of the operation (its slot and buffers must be kept).</summary>
    protected abstract bool IsOutstanding(ref Operation op);

    /// <summary>Called once when the channel is gone for good (after the last outstanding operation), after it left
    /// its reactor.</summary>
    protected abstract void OnClosed();

    /// <summary>Logs one failed request (<paramref name="count"/>: failures so far; called for a bounded share of them).</summary>
    protected abstract void LogFailure(in Operation op, string error, long count);

    /// <summary>Whether <paramref name="errno"/> means the medium is full (the request fails with NoSpace).</summary>
    protected virtual bool IsNoSpace(int errno) => errno == Errno.ENOSPC;

    /// <summary>A completion of this channel on its own reactor (reaped here or taken from the inbox). A faulted or
    /// disposed channel completes nothing more: the library gave the slot back, so it is freed.</summary>
    internal void Completed(int index, long result)
    {
        try
        {
            if (Faulted || Disposed) Release(index);
            else Handle(index, result);
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

    protected sealed override ulong ClearSlot(int index)
    {
        ulong tag = Ops[index].Tag;
        Ops[index] = default;
        return tag;
    }

    protected sealed override bool IsIdle(int index) => Ops[index].Step != Step.None && !IsOutstanding(ref Ops[index]);

    protected void LogError(in Operation op, string error)
    {
        if (CountError(out long count)) LogFailure(op, error, count);
    }

    protected sealed override void ReleaseResources()
    {
        Io.StopPolling(this);
        Io.RemoveTarget(_target);
        OnClosed();
    }
}
