namespace BlkTarget.Storage.Transfer;

/// <summary>
/// What every channel whose requests complete later shares (through the io_uring, or a network client library): a
/// fixed number of request slots allocated once, admission (validation, then a free slot), completion to the sink, a
/// bounded error log, and the fault and shutdown paths: a faulted or disposed channel completes nothing more, but keeps
/// each slot (and the guest buffers and memory it points at) until whoever holds it (the kernel, a helper thread, the
/// library) has given it back, and releases its resources only when nothing of it is outstanding.
/// </summary>
internal abstract class SlotChannel : IBlockChannel
{
    private readonly SlotStack _slots;
    private long _errors;
    private bool _released;

    protected SlotChannel(IBlockCompletionSink sink, int maxInFlight)
    {
        Sink = sink;
        _slots = new SlotStack(maxInFlight);
    }

    protected IBlockCompletionSink Sink { get; }
    /// <summary>Set once a handler threw or the channel was cancelled: nothing more is issued or completed.</summary>
    protected bool Faulted { get; private set; }
    protected bool Disposed { get; private set; }

    public int InFlight => _slots.InUse;

    public abstract void Submit(in BlockRequest request);

    /// <summary>Takes a slot for <paramref name="request"/>; a request that does not fit <paramref name="info"/>, or
    /// finds the channel stopped or every slot taken, is completed here with an error instead (false).</summary>
    protected bool TryAdmit(in BlockRequest request, BlockDeviceInfo info, out int index)
    {
        var status = RequestValidation.Check(request, info);
        if (status != BlockStatus.Ok || Faulted || Disposed || !_slots.TryTake(out index))
        {
            index = -1;
            Sink.Complete(request.Tag, status != BlockStatus.Ok ? status : BlockStatus.IoError);
            return false;
        }
        return true;
    }

    /// <summary>Gives back what slot <paramref name="index"/> holds and clears it; returns its request's tag.</summary>
    protected abstract ulong ClearSlot(int index);

    /// <summary>Whether slot <paramref name="index"/> holds a request that nothing outside works on (the kernel, a
    /// helper or the library holds nothing of it).</summary>
    protected abstract bool IsIdle(int index);

    /// <summary>Gives back what the channel holds in its reactor; called once, after the last outstanding operation.</summary>
    protected abstract void ReleaseResources();

    /// <summary>Ends the request in slot <paramref name="index"/> and reports it to the sink.</summary>
    protected void Finish(int index, BlockStatus status)
    {
        ulong tag = ClearSlot(index);
        ReturnSlot(index);
        if (!Faulted) Sink.Complete(tag, status);
    }

    /// <summary>Frees slot <paramref name="index"/> without reporting anything (fault and shutdown paths).</summary>
    protected void Release(int index)
    {
        ClearSlot(index);
        ReturnSlot(index);
    }

    private void ReturnSlot(int index)
    {
        _slots.Return(index);
        if (Disposed && _slots.InUse == 0) Close();
    }

    /// <summary>Counts a failed request; true for those to log: the first ones and then every thousandth, so a dying
    /// disk, or a server or cluster that is down, cannot flood the log.</summary>
    protected bool CountError(out long count)
    {
        count = ++_errors;
        return count <= 10 || count % 1000 == 0;
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
        Sink.ChannelFaulted(error);
    }

    /// <summary>Frees every slot nothing outside is working on; the others go when their completion arrives.</summary>
    private void ReleaseIdleSlots()
    {
        for (int i = 0; i < _slots.Capacity; i++)
            if (IsIdle(i)) Release(i);
    }

    /// <summary>
    /// Closes the channel. Requests the kernel, a helper or the library still holds keep their slots (and the memory
    /// they point at) until they come back; the channel releases its resources after the last one, so its index (in
    /// its I/O context, in a routing table) is never reused while a completion for it can still arrive.
    /// </summary>
    public void Dispose()
    {
        if (Disposed) return;
        Disposed = true;
        ReleaseIdleSlots();
        if (_slots.InUse == 0) Close();
    }

    private void Close()
    {
        if (_released) return;
        _released = true;
        ReleaseResources();
    }
}
