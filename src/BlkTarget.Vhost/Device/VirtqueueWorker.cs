using System.Diagnostics;
using BlkTarget.Storage;
using BlkTarget.Storage.Interop;
using BlkTarget.Vhost.Memory;
using BlkTarget.Vhost.Queues;
using BlkTarget.Vhost.Stats;
using Microsoft.Extensions.Logging;

namespace BlkTarget.Vhost.Device;

/// <summary>
/// What every running device queue does the same way, on its reactor thread: take chains from the ring, give
/// each one a slot (indexed by its head descriptor, unique while in flight, allocated once at queue start),
/// publish used entries (every few requests in a deep batch, and at the end of each poll) and signal the guest only
/// when it asked (once per poll), stop after draining, and
/// refuse further work once the guest broke the ring. Device models implement <see cref="Process"/>.
/// <para>
/// After an internal error (<see cref="Fault"/>: the queue's own code threw; <see cref="ChannelFaulted"/>: its
/// backend channel's completion handling threw) the queue is faulted: it takes no new chains, and it publishes
/// nothing more, neither used entries nor status bytes nor interrupts, because its slots and ring state may be
/// inconsistent and a wrong used entry would hand the guest a buffer the backend still writes into. Completions
/// that still arrive only end the backend's use of their buffers. The queue counts as drained once its backend
/// has nothing in flight (<see cref="BackendInFlight"/>): until then the kernel may write into guest memory, which
/// therefore must stay mapped. Its requests are lost to the guest, which needs a device reset anyway.
/// </para>
/// </summary>
public abstract unsafe class VirtqueueWorker : IRunningQueue
{
    /// <summary>Segments a slot holds beyond one per descriptor: a buffer that spans two guest memory regions
    /// becomes two segments.</summary>
    public const int RegionSplitAllowance = 16;
    /// <summary>Requests taken per poll before completions get a turn, to keep latency fair.</summary>
    private const int PopBudget = 64;
    /// <summary>Used entries a poll publishes at a time while it still takes requests. Publishing only at the end
    /// of a poll hands the driver a deep queue's completions all at once, and the device then idles until the
    /// driver has resubmitted them; publishing along the way lets both CPUs work at once. Every publish moves the
    /// used index's cache line to the device's CPU and back, so not after each request: 4 KiB RAM reads at QD32
    /// measured 1.22M IOPS publishing at the end, 1.40M after each request, 1.43M every 2nd, 1.61M every 8th,
    /// about as much every 16th (interleaved runs, medians of 7).</summary>
    private const int PublishBatch = 8;

    private readonly MappedMemory _segmentBuffer;
    private readonly int _segmentsPerSlot;
    private readonly IoVec* _segments;
    private readonly IoVec* _scratch;
    private readonly bool[] _busy;
    /// <summary>VHOST_F_LOG_ALL: where guest writes are marked, or null (then <see cref="_written"/> is null too).</summary>
    private DirtyLog? _dirtyLog;
    private readonly WrittenBuffers? _written;
    /// <summary>Per slot: the Stopwatch timestamp of the poll that took the request (latency statistics).</summary>
    private readonly long[] _takenAt;
    /// <summary>The clock for the current completion batch (0: not read yet); see <see cref="CompleteRequest(ushort, uint, QueueCounters, IoOp, ulong, IoErrorKind)"/>.</summary>
    private long _completedAt;
    private readonly int _kickFd;
    private readonly string _deviceName;
    private int _callFd;
    private int _inFlight;
    private bool _usedPending;
    /// <summary>Used entries pushed since the last <see cref="IVirtqueue.PublishUsed"/>.</summary>
    private int _unpublished;
    /// <summary>The last poll took nothing: the next request may be the driver's reused chain (see <see cref="Poll"/>).</summary>
    private bool _lastPollIdle;
    /// <summary>Head and first buffer (a guest address, only ever prefetched, never read) of the last chain taken.</summary>
    private ushort _lastHead;
    private byte* _lastHeader;
    private Action? _onDrained;
    private bool _stopping;
    private bool _faulted;
    /// <summary>Faulted, and the backend has returned every operation since.</summary>
    private bool _settled;
    /// <summary>Head of the request QoS holds back (-1: none). It was taken from the ring and sits in its slot
    /// (busy, in flight, so a drain waits for it and inflight tracking resubmits it after a reconnect); while it
    /// waits the queue takes nothing more from the ring, so the guest's further requests stay in the avail ring and
    /// the order of requests is kept.</summary>
    private int _held = -1;
    private ChainBuffers _heldChain;
    /// <summary>Stopwatch timestamp before which asking the limits again for <see cref="_held"/> is pointless.</summary>
    private long _throttledUntil;
    /// <summary><see cref="Qos.QosLimiter.Generation"/> when <see cref="_held"/> was last refused.</summary>
    private int _heldGeneration;

    protected VirtqueueWorker(QueueStartInfo start, string deviceName, ILogger log)
    {
        Index = start.Index;
        Ring = start.Ring;
        Memory = start.Memory;
        Log = log;
        _deviceName = deviceName;
        _kickFd = start.KickFd;
        _callFd = start.CallFd;
        _busy = new bool[Ring.Size];
        _takenAt = new long[Ring.Size];
        // Every chain the walker accepts fits its slot: a direct chain holds at most queue-size descriptors, an
        // indirect table at most 1024 (virtio 1.2 2.7.5.3.1 allows queue-size; QEMU accepts 1024 whatever the queue
        // size), whatever seg_max says (Windows' drivers ignore it). The memory is an anonymous mapping, so only the
        // pages long chains really touch are ever committed. One extra slot's worth at the end is the scratch space
        // chains are walked into.
        _segmentsPerSlot = (int)Math.Max(Ring.Size, (uint)DescriptorChainWalker.MaxIndirectEntries) + RegionSplitAllowance;
        _segmentBuffer = MappedMemory.MapAnonymous((ulong)(Ring.Size + 1) * (ulong)_segmentsPerSlot * (ulong)sizeof(IoVec));
        _segments = (IoVec*)_segmentBuffer.Pointer;
        _scratch = _segments + (long)Ring.Size * _segmentsPerSlot;
        _dirtyLog = start.DirtyLog;
        if (_dirtyLog is not null) _written = new WrittenBuffers(Ring.Size, _segmentsPerSlot);
        // Every (re)start interrupts the guest once (as SPDK does): used entries published while the frontend had no
        // call fd wired (a target stopped with SIGTERM drains after QEMU has already dropped its notifiers; a killed
        // one may die between publish and signal) are otherwise never announced, and the guest waits forever.
        if (_callFd >= 0) EventFd.Signal(_callFd);
    }

    public int Index { get; }
    public string DeviceName => _deviceName;
    protected IVirtqueue Ring { get; }
    protected GuestMemory Memory { get; }
    protected ILogger Log { get; }
    public int KickFd => _kickFd;
    public ushort LastAvailIdx => Ring.LastAvailIdx;
    public uint VringBase => Ring.VringBase;
    public string? BrokenReason { get; private set; }
    /// <summary>Requests taken from the ring and not completed yet.</summary>
    public int InFlight => Volatile.Read(ref _inFlight);
    public bool Faulted => _faulted;

    /// <summary>Operations the device model's backend channels hold (0 for models without a backend).</summary>
    public virtual int BackendInFlight => 0;

    /// <summary>
    /// Handles the request whose chain starts at <paramref name="head"/>; its buffers are already in the slot
    /// (<paramref name="chain"/>.Segments). Must end with <see cref="CompleteRequest"/> (now or when the backend
    /// finishes) or, for a request that cannot be answered at all, <see cref="Abandon"/>.
    /// </summary>
    protected abstract void Process(ushort head, ref ChainBuffers chain);

    /// <summary>
    /// A hint that <paramref name="chain"/> (walked; in its slot and admitted, or for the first request after an idle
    /// poll, just walked) is processed soon: a model may start loading what that processing will touch (a RAM disk's
    /// data lines). It must change nothing and may fail silently: what it reads from guest memory is not trusted,
    /// and <see cref="Process"/> reads and checks everything again.
    /// </summary>
    protected virtual void Prefetch(in ChainBuffers chain) { }

    /// <summary>Work a device model deferred rather than finished in <see cref="Process"/> (e.g. a task
    /// management function waiting for requests on other queues). While true, the reactor keeps polling.</summary>
    protected virtual bool HasDeferredWork => false;

    /// <summary>Called on every poll (also while stopping) to finish deferred work; returns how much happened.</summary>
    protected virtual int PollDeferred() => 0;

    /// <summary>
    /// QoS: whether the request at <paramref name="head"/> (its buffers already in the slot) may start at
    /// <paramref name="now"/> (Stopwatch ticks), taking its tokens if so. False holds it back without taking any:
    /// it is asked again once <paramref name="waitTicks"/> (Stopwatch ticks) have passed, and nothing more is taken
    /// from the ring meanwhile. Requests are admitted without asking while the queue stops (a drain must end).
    /// </summary>
    protected virtual bool Admit(ushort head, in ChainBuffers chain, long now, out long waitTicks)
    {
        waitTicks = 0;
        return true;
    }

    /// <summary>While a request is held back by QoS: the Stopwatch timestamp at which to poll this queue again
    /// (the reactor's sleep ends then at the latest); 0 otherwise.</summary>
    public long ThrottledUntil => _held >= 0 && !_faulted ? _throttledUntil : 0;

    /// <summary>Called once when a faulted queue's backend has returned every operation: the requests it will never
    /// complete can no longer be touched by anyone.</summary>
    protected virtual void OnFaultSettled() { }

    /// <summary>Returns request <paramref name="head"/> to the guest; published at the end of this poll.</summary>
    protected void CompleteRequest(ushort head, uint usedLength)
    {
        // Before the used entry: the guest's pages are marked before the used index hands them over.
        if (_dirtyLog is not null) _written!.Mark(head, _dirtyLog, Memory);
        Ring.PushUsed(head, usedLength);
        _busy[head] = false;
        _inFlight--;
        _usedPending = true;
        _unpublished++;
    }

    /// <summary><see cref="CompleteRequest(ushort, uint)"/>, counting the request in <paramref name="counters"/>
    /// (which <see cref="QueueCounters.Begin"/> was called on for it): its latency runs from the poll that took it.
    /// <paramref name="bytes"/> count only when <paramref name="error"/> is <see cref="IoErrorKind.None"/>.</summary>
    protected void CompleteRequest(ushort head, uint usedLength, QueueCounters counters, IoOp op, ulong bytes, IoErrorKind error)
    {
        // One clock read per completion batch (reset when the batch is published): reading the clock costs ~50 ns
        // here, a tenth of a 4 KiB RAM request, and requests completed in one batch reach the guest together anyway.
        if (_completedAt == 0) _completedAt = Stopwatch.GetTimestamp();
        counters.Complete(op, bytes, error, _completedAt - _takenAt[head]);
        CompleteRequest(head, usedLength);
    }

    /// <summary>Drops a request that cannot be completed (e.g. no status byte) and stops the queue.</summary>
    protected void Abandon(ushort head, string reason)
    {
        _busy[head] = false;
        _inFlight--;
        Break(reason);
    }

    public void SetCallFd(int fd)
    {
        _callFd = fd;
        // A completion published just before the swap was signalled on the old fd, which the frontend may no
        // longer watch (QEMU replaces its notifiers when the guest reprograms MSI-X while the ring already runs):
        // a spurious interrupt is harmless, a lost one leaves the guest waiting forever.
        if (fd >= 0 && !_faulted) EventFd.Signal(fd);
    }

    /// <summary>Switches to another dirty log (a new SET_LOG_BASE while logging). Only for a queue started with
    /// one: logging is switched on or off by restarting the queue, so that every request in flight was recorded.</summary>
    /// <exception cref="InvalidOperationException">the queue was started without a dirty log.</exception>
    public void ReplaceDirtyLog(DirtyLog log)
    {
        if (_dirtyLog is null) throw new InvalidOperationException("the queue was started without dirty logging");
        _dirtyLog = log;
    }

    public void BeginStop(Action onDrained)
    {
        _stopping = true;
        _onDrained = onDrained;
        if (_faulted) Settle();
        CheckDrained();
    }

    public int Poll()
    {
        if (_faulted)
        {
            // Only waits for the backend; the ring and the call fd are left alone.
            if (Settle()) CheckDrained();
            return 0;
        }
        int work = PollDeferred();
        if (_held >= 0) work += RetryHeld();
        if (!_stopping && BrokenReason is null && _held < 0)
        {
            // One timestamp per poll that finds work: every request taken in it has waited at least since then.
            long now = 0;
            // After an idle poll, a driver waiting on each request (QD1) has most likely reused the chain it got
            // back last, as Linux's free list and our load generator do: ask for that chain's descriptor and header
            // lines together with the avail entry, instead of one miss after the other as the walk reads them. A
            // wrong guess costs two prefetches.
            if (_lastPollIdle && _lastHeader != null && Ring.HasPending)
            {
                Ring.PrefetchNext(_lastHead);
                CacheLines.Prefetch(_lastHeader);
            }
            // A software pipeline over the requests of one poll, in ring order. Each admitted request first has the
            // line its first buffer starts in (the request header) requested from memory; one request later the
            // model's Prefetch hint reads that header and starts loading what processing will touch (a RAM disk's
            // data); one request later still it is processed. The guest wrote those lines on another CPU, so each
            // is a cache miss of its own: this way they overlap with the work on the requests before instead of
            // stalling it one after the other. The order of requests is kept.
            int hinted = -1, taken = -1;
            bool takenHinted = false;
            ChainBuffers hintedChain = default, takenChain = default;
            for (int i = 0; i < PopBudget && BrokenReason is null; i++)
            {
                // The chain is walked into scratch space first: the head (and so the slot) is known only after the pop.
                var chain = new ChainBuffers(_scratch, _segmentsPerSlot);
                var status = Ring.TryPopChain(Memory, ref chain, out ushort head, out string? error);
                if (status == PopStatus.Empty) break;
                work++;
                if (status == PopStatus.Corrupt) Break(error!);
                else
                {
                    // The first request after an idle poll (a driver waiting on each request): no request before it
                    // to overlap with, so it is hinted at once. Its header line was requested with the avail entry
                    // above and has mostly arrived by the end of the walk; its data then loads while Start and the
                    // rest of the poll run instead of when the copy begins (4 KiB RAM reads at depth 1: the copy from
                    // a cold block is most of the target's part of the round trip).
                    bool hintedNow = i == 0 && _lastPollIdle;
                    if (hintedNow) Prefetch(in chain);
                    if (now == 0)
                    {
                        now = Stopwatch.GetTimestamp();
                        _completedAt = 0;   // a completion clock read before this one would precede these requests
                    }
                    _takenAt[head] = now;
                    if (head == hinted || head == taken)
                    {
                        // A head again in one batch: legal only if its request is done, so finish the staged ones
                        // first, as without the pipeline (a synchronous backend completes them inline).
                        if (hinted >= 0) Process((ushort)hinted, ref hintedChain);
                        if (taken >= 0) Process((ushort)taken, ref takenChain);
                        hinted = taken = -1;
                    }
                    if (Start(head, ref chain, now))
                    {
                        if (chain.Count > 0)
                        {
                            CacheLines.Prefetch(chain.Segments[0].Base);
                            _lastHeader = chain.Segments[0].Base;
                            _lastHead = head;
                        }
                        if (taken >= 0 && !takenHinted) Prefetch(in takenChain);
                        if (hinted >= 0)
                        {
                            Process((ushort)hinted, ref hintedChain);
                            if (_unpublished >= PublishBatch) PublishPushed();
                        }
                        hinted = taken;
                        hintedChain = takenChain;
                        taken = head;
                        takenChain = chain;
                        takenHinted = hintedNow;
                    }
                    if (_held >= 0) break;
                }
            }
            // Requests taken before a corrupt chain or a held one are valid and in flight: they run as they would have.
            if (hinted >= 0)
            {
                if (taken >= 0 && !takenHinted) Prefetch(in takenChain);
                Process((ushort)hinted, ref hintedChain);
            }
            if (taken >= 0) Process((ushort)taken, ref takenChain);
            _lastPollIdle = work == 0;
        }
        PublishAndNotify();
        if (_stopping) CheckDrained();
        return work;
    }

    /// <summary>Asks the limits again for the held request (or lets it go without asking while the queue stops or
    /// is broken: it is in flight and must finish); returns 1 when it started.</summary>
    private int RetryHeld()
    {
        long now = Stopwatch.GetTimestamp();
        if (!_stopping && BrokenReason is null)
        {
            // A throttled queue costs the reactor one clock read per round until its wait is over (or limits change).
            if (now < _throttledUntil && Qos.QosLimiter.Generation == _heldGeneration) return 0;
            int generation = Qos.QosLimiter.Generation;
            if (!Admit((ushort)_held, in _heldChain, now, out long wait))
            {
                _throttledUntil = now + Math.Max(1, wait);
                _heldGeneration = generation;
                return 0;
            }
        }
        ushort head = (ushort)_held;
        _held = -1;
        _throttledUntil = 0;
        Process(head, ref _heldChain);
        return 1;
    }

    /// <summary>Moves a taken chain into its slot and asks QoS; true when the request may be processed now (the
    /// caller does that), false when it is held back or the chain broke the ring.</summary>
    private bool Start(ushort head, ref ChainBuffers chain, long now)
    {
        if (_busy[head])
        {
            Break($"descriptor {head} made available again while in flight");
            return false;
        }
        // Move the walked buffers into the slot: they must stay valid while the backend works on them.
        IoVec* segments = _segments + head * _segmentsPerSlot;
        Buffer.MemoryCopy(_scratch, segments, (long)_segmentsPerSlot * sizeof(IoVec), (long)chain.Count * sizeof(IoVec));
        chain.Segments = segments;
        // Device models may trim the slot's segments while they work: the log needs them as the guest gave them.
        if (_dirtyLog is not null) _written!.Record(head, ref chain, _scratch);
        _busy[head] = true;
        _inFlight++;
        int generation = Qos.QosLimiter.Generation;
        if (!Admit(head, in chain, now, out long wait))
        {
            _heldGeneration = generation;
            _held = head;
            _heldChain = chain;
            _throttledUntil = now + Math.Max(1, wait);
            return false;
        }
        return true;
    }

    public void Fault(Exception error) => EnterFault($"internal error: {error.Message}");

    /// <summary>
    /// <see cref="IBlockCompletionSink.ChannelFaulted"/> for device models whose queue is the sink: the I/O engine
    /// caught an exception from the channel's completion handling (on this reactor thread). Logged with the device
    /// name; the queue is faulted like after <see cref="Fault"/>.
    /// </summary>
    public void ChannelFaulted(Exception error)
    {
        Log.LogError(error, "{Device} queue {Queue}: backend channel failed while completing requests; queue stopped", _deviceName, Index);
        EnterFault($"internal error in the backend channel: {error.Message}");
    }

    public void AbandonInFlight()
    {
        EnterFault("abandoned with requests in flight");
        _onDrained = null;
        _callFd = -1;
    }

    private void EnterFault(string reason)
    {
        if (_faulted) return;
        _faulted = true;
        BrokenReason = reason;
        _usedPending = false;
        _unpublished = 0;
        CancelBackend();
        Settle();
        CheckDrained();
    }

    /// <summary>Stops the device model's backend channels (<see cref="IBlockChannel.Cancel"/>): a faulted queue's
    /// requests must not reach the disk any more.</summary>
    protected virtual void CancelBackend() { }

    /// <summary>True once a faulted queue's backend holds nothing; runs <see cref="OnFaultSettled"/> the first time.</summary>
    private bool Settle()
    {
        if (!_settled && BackendInFlight == 0)
        {
            _settled = true;
            OnFaultSettled();
        }
        return _settled;
    }

    public bool PrepareToSleep()
    {
        // A faulted queue waits for backend completions, which wake the reactor through the I/O engine's eventfd.
        if (_faulted) return false;
        // Requests in flight do not keep the reactor awake: the I/O engine's eventfd wakes it on completion.
        if (_usedPending || HasDeferredWork) return true;
        // Held back by QoS: the reactor wakes at ThrottledUntil. Guest notifications stay off, or every further
        // request the guest queues would wake the reactor only to find the queue still throttled. A held request
        // the queue must finish regardless (stopping, broken) keeps the reactor awake.
        if (_held >= 0) return _stopping || BrokenReason is not null;
        if (_stopping || BrokenReason is not null) return false;
        if (_kickFd < 0) return true;
        return Ring.EnableNotifications();
    }

    public void WokeUp()
    {
        if (!_stopping && BrokenReason is null) Ring.DisableNotifications();
    }

    /// <summary>Publishes the used entries pushed so far: in the middle of a poll (see <see cref="PublishBatch"/>) and
    /// at its end. Whether the guest wants an interrupt is decided only at the end, over everything published since
    /// the previous decision (vring_need_event takes a range).</summary>
    private void PublishPushed()
    {
        Ring.PublishUsed();
        _unpublished = 0;
    }

    private void PublishAndNotify()
    {
        _completedAt = 0;
        if (!_usedPending) return;
        _usedPending = false;
        if (_unpublished > 0) PublishPushed();
        if (Ring.ShouldSignal() && _callFd >= 0) EventFd.Signal(_callFd);
    }

    private void CheckDrained()
    {
        if (_onDrained is null || (_faulted ? !_settled : _inFlight != 0)) return;
        var done = _onDrained;
        _onDrained = null;
        done();
    }

    protected void Break(string reason)
    {
        if (BrokenReason is not null) return;
        BrokenReason = reason;
        Log.LogError("{Device} queue {Queue}: guest error, queue stopped: {Reason}", _deviceName, Index, reason);
    }

    public virtual void Dispose()
    {
        _segmentBuffer.Dispose();
        _written?.Dispose();
    }
}
