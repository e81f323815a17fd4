using System.Diagnostics;
using System.Runtime.CompilerServices;
using BlkTarget.Vhost.Frontend;

namespace BlkTarget.Bench;

/// <summary>Which part of a job a worker is running.</summary>
internal enum WorkerPhase
{
    /// <summary>Verify jobs that only read: write every block of the slice once, so reads have something to check.</summary>
    Fill,
    /// <summary>The measured job.</summary>
    Main,
    /// <summary>Verify jobs that wrote: read back every block written and check it.</summary>
    Check,
}

/// <summary>Set from outside (Ctrl+C) to end every worker's job early; the report still comes.</summary>
public sealed class StopSignal
{
    private volatile bool _stop;
    private volatile bool _lost;
    public bool IsSet => _stop;
    public void Set() => _stop = true;

    /// <summary>The target closed the connection (e.g. its export was deleted): requests in flight will never
    /// complete, so the drivers give up on them instead of waiting.</summary>
    public bool ConnectionLost => _lost;

    public void SetConnectionLost()
    {
        _lost = true;
        _stop = true;
    }
}

/// <summary>
/// Drives one virtqueue from one dedicated thread, fio-style: keeps <c>iodepth</c> requests in flight, reaps
/// completions by polling the used ring (sleeping on the call eventfd only after an idle spell), resubmits in the
/// same round and kicks once per round. Everything it needs is allocated in the constructor: the loop allocates
/// nothing, takes no lock and creates no Task.
/// <para>
/// Timing: one timestamp per round, taken as soon as the round's first completion is seen; it is both the
/// completion time of everything reaped in the round and the issue time of everything submitted in it, so
/// latencies include the time the driver spends reaping (as fio's completion latency does).
/// </para>
/// </summary>
internal sealed unsafe class QueueWorker
{
    private readonly BlkRequestQueue _blk;
    private readonly QueueDriver _vq;
    private readonly BenchOptions _options;
    private readonly StopSignal _stopSignal;
    private readonly uint _bs;
    private readonly GuestBuffer[] _buffers;
    private readonly GuestBuffer[][] _segments;
    private readonly long[] _issuedAt;
    private readonly ulong[] _block;
    private readonly bool[] _isWrite;
    private readonly uint[] _generation;
    private readonly int[] _free;
    private int _freeCount;
    // The addressable blocks: random offsets fall in [_domainStart, _domainStart + _domainBlocks) (in blocks of
    // bs, counted from _rangeOffset); sequential ones walk the same domain from _seqStart, wrapping.
    private readonly ulong _rangeOffset;
    private readonly ulong _domainStart;
    private readonly ulong _domainBlocks;
    private readonly ulong _seqStart;
    private readonly BlockLedger? _ledger;
    private readonly double _nsPerTick;
    private readonly long _yieldAfterTicks;
    private ulong _rng;
    private ulong _seqCursor;

    public QueueWorker(int index, BlkRequestQueue blk, GuestMemoryArena arena, BenchOptions options, StopSignal stopSignal,
        ulong rangeOffset, ulong rangeBlocks, uint maxSegmentBytes, bool indirect)
    {
        Index = index;
        _blk = blk;
        _vq = blk.Queue;
        _options = options;
        _stopSignal = stopSignal;
        _bs = options.BlockSize;
        Indirect = indirect;
        int depth = options.IoDepth;
        _buffers = new GuestBuffer[depth];
        _segments = new GuestBuffer[depth][];
        _issuedAt = new long[depth];
        _block = new ulong[depth];
        _isWrite = new bool[depth];
        _generation = new uint[depth];
        _free = new int[depth];
        var random = new Random(unchecked((int)(options.Seed + (ulong)index * 7919)));
        for (int i = 0; i < depth; i++)
        {
            var buffer = arena.Allocate(_bs, 4096);
            // Touch (and fill) every page now: page faults belong to setup, not to the first requests.
            random.NextBytes(buffer.Span);
            _buffers[i] = buffer;
            uint pieces = (_bs + maxSegmentBytes - 1) / maxSegmentBytes;
            var segments = new GuestBuffer[pieces];
            for (uint p = 0; p < pieces; p++)
            {
                uint start = p * maxSegmentBytes;
                segments[p] = buffer.Slice(start, Math.Min(maxSegmentBytes, _bs - start));
            }
            _segments[i] = segments;
            _free[i] = depth - 1 - i;
        }
        _freeCount = depth;

        _rangeOffset = rangeOffset;
        if (options.Verify)
        {
            // Disjoint slices: a block is only ever touched by one queue, so its expected content is known.
            ulong per = rangeBlocks / (ulong)options.Queues;
            _domainStart = per * (ulong)index;
            _domainBlocks = index == options.Queues - 1 ? rangeBlocks - _domainStart : per;
            _seqStart = 0;
            _ledger = new BlockLedger(_domainBlocks);
        }
        else
        {
            _domainStart = 0;
            _domainBlocks = rangeBlocks;
            _seqStart = rangeBlocks / (ulong)options.Queues * (ulong)index;
        }
        _seqCursor = _seqStart;
        _rng = options.Seed ^ (0x9E37_79B9_7F4A_7C15UL * (ulong)(index + 1));
        if (_rng == 0) _rng = 1;
        _nsPerTick = 1e9 / Stopwatch.Frequency;
        _yieldAfterTicks = Stopwatch.Frequency / 500_000;   // 2 us
        ReadLatency = new LatencyHistogram();
        WriteLatency = new LatencyHistogram();
    }

    public int Index { get; }
    public bool Indirect { get; }
    public LatencyHistogram ReadLatency { get; }
    public LatencyHistogram WriteLatency { get; }
    public long ReadIos { get; private set; }
    public long WriteIos { get; private set; }
    public long Errors { get; private set; }
    public long VerifiedBlocks { get; private set; }
    public long VerifyMismatches { get; private set; }
    /// <summary>Times the thread slept on the call eventfd during the measured phase.</summary>
    public long Sleeps { get; private set; }
    public string? FirstError { get; private set; }
    public Exception? Failure { get; set; }
    /// <summary>The measured window of this queue, in Stopwatch ticks.</summary>
    public long MeasureStart { get; private set; }
    public long MeasureEnd { get; private set; }
    public double MeasuredSeconds => (MeasureEnd - MeasureStart) / (double)Stopwatch.Frequency;
    public ulong SliceBlocks => _domainBlocks;

    /// <summary>
    /// The whole job on this queue: an optional fill, the measured phase (a ramp of <paramref name="rampTicks"/>
    /// from <paramref name="start"/>, then <paramref name="runTicks"/> measured, negative: unlimited; or until
    /// <paramref name="ioBudget"/> requests), then an optional read-back check. Times are Stopwatch ticks.
    /// </summary>
    public void Run(long start, long rampTicks, long runTicks, long ioBudget)
    {
        _vq.DisableInterrupts();
        if (_ledger is not null && !_options.Writes)
        {
            RunPhase(WorkerPhase.Fill, long.MaxValue, long.MaxValue, (long)_domainBlocks);
            // The fill took time of its own: the measured phase starts after it.
            start = Stopwatch.GetTimestamp();
        }
        long measureStart = start + rampTicks;
        long deadline = runTicks < 0 ? long.MaxValue : measureStart + runTicks;
        RunPhase(WorkerPhase.Main, measureStart, deadline, ioBudget);
        if (_ledger is not null && _options.Writes)
            RunPhase(WorkerPhase.Check, long.MaxValue, long.MaxValue, (long)_ledger.WrittenBlocks);
    }

    private void RunPhase(WorkerPhase phase, long measureStart, long deadline, long ioBudget)
    {
        bool main = phase == WorkerPhase.Main;
        bool measuring = false;
        bool stopping = false;
        long issued = 0;
        int inFlight = 0;
        long idleSince = 0;
        long idleTicks = _options.IdlePollMicroseconds < 0 ? -1 : (long)(_options.IdlePollMicroseconds * (Stopwatch.Frequency / 1e6));
        _seqCursor = phase == WorkerPhase.Main ? _seqStart : 0;

        while (true)
        {
            // Reap everything the device published; the round's timestamp is taken when the first one is seen.
            long now = 0;
            int reaped = 0;
            while (_blk.TryComplete(out var completion))
            {
                if (now == 0) now = Stopwatch.GetTimestamp();
                Complete(completion, now, phase, measuring);
                reaped++;
            }
            inFlight -= reaped;
            if (now == 0) now = Stopwatch.GetTimestamp();

            if (main && !measuring && now >= measureStart)
            {
                // Ramp over: forget what was counted so far (requests in flight now are counted when they finish).
                ResetCounters();
                measuring = true;
                MeasureStart = now;
            }
            if (!stopping && (now >= deadline || issued >= ioBudget || _stopSignal.IsSet)) stopping = true;

            int submitted = 0;
            if (!stopping)
            {
                while (_freeCount > 0 && issued < ioBudget && Submit(phase, now))
                {
                    issued++;
                    submitted++;
                }
                inFlight += submitted;
                if (submitted > 0) _blk.Kick();
            }
            if (stopping && inFlight == 0)
            {
                if (main) MeasureEnd = now;
                return;
            }
            if (reaped != 0 || submitted != 0)
            {
                idleSince = 0;
                continue;
            }
            // Nothing happened this round.
            if (idleSince == 0)
            {
                idleSince = now;
                continue;
            }
            if (idleTicks < 0 || now - idleSince < idleTicks)
            {
                // Past a short spin, give the CPU to anything else runnable on it (the target's reactor, when
                // threads outnumber cores); sched_yield returns at once when nothing is.
                if (now - idleSince > _yieldAfterTicks) Thread.Yield();
                continue;
            }
            if (_stopSignal.ConnectionLost)
                throw new TimeoutException($"the target closed the connection with {inFlight} request(s) in flight on queue {Index}");
            // Idle for a while: let the device interrupt us instead of burning the CPU it may need.
            if (measuring) Sleeps++;
            _vq.WaitForUsed(100);
            _vq.DisableInterrupts();
            idleSince = 0;
        }
    }

    private void ResetCounters()
    {
        ReadLatency.Reset();
        WriteLatency.Reset();
        ReadIos = 0;
        WriteIos = 0;
        Sleeps = 0;
    }

    /// <summary>Picks the next request of <paramref name="phase"/> and adds it to the ring. False when the
    /// phase has nothing to issue right now (verify: every candidate block busy).</summary>
    private bool Submit(WorkerPhase phase, long now)
    {
        bool write;
        ulong block;
        switch (phase)
        {
            case WorkerPhase.Fill:
                write = true;
                block = NextSequential();
                break;
            case WorkerPhase.Check:
                write = false;
                if (!NextWritten(out block)) return false;
                break;
            default:
                write = _options.Rw switch
                {
                    RwMode.RandWrite or RwMode.Write => true,
                    RwMode.RandRw => NextRandom(100) >= (ulong)_options.RwMixRead,
                    _ => false,
                };
                if (!_options.Random)
                {
                    block = NextSequential();
                    if (_ledger is not null && _ledger.IsBusy(block)) return false;
                }
                else if (!NextRandomBlock(out block)) return false;
                break;
        }

        int slot = _free[_freeCount - 1];
        ulong deviceOffset = _rangeOffset + (_domainStart + block) * _bs;
        if (_ledger is not null)
        {
            _ledger.SetBusy(block, true);
            if (write)
            {
                uint generation = _ledger.Generation(block) + 1;
                _generation[slot] = generation;
                VerifyPattern.Fill(_buffers[slot].Pointer, _bs, deviceOffset, generation, _options.Seed);
            }
        }
        var type = write ? BlkRequestType.Out : BlkRequestType.In;
        if (!_blk.TrySubmit(type, deviceOffset / 512, _segments[slot], (ulong)slot, Indirect))
        {
            // No room in the ring (cannot happen when the queue is sized for the depth): try again next round.
            _ledger?.SetBusy(block, false);
            return false;
        }
        _freeCount--;
        _issuedAt[slot] = now;
        _block[slot] = block;
        _isWrite[slot] = write;
        return true;
    }

    private void Complete(in BlkCompletion completion, long now, WorkerPhase phase, bool measuring)
    {
        int slot = (int)completion.Token;
        _free[_freeCount++] = slot;
        bool write = _isWrite[slot];
        ulong block = _block[slot];
        if (!completion.IsOk)
        {
            Errors++;
            FirstError ??= $"queue {Index}: {(write ? "write" : "read")} at byte {_rangeOffset + (_domainStart + block) * _bs} failed with status {completion.Status}";
        }
        if (_ledger is not null)
        {
            _ledger.SetBusy(block, false);
            if (completion.IsOk) CheckOrRecord(slot, block, write);
        }
        if (!measuring) return;
        ulong ns = ToNanoseconds(now - _issuedAt[slot]);
        if (write)
        {
            WriteIos++;
            WriteLatency.Record(ns);
        }
        else
        {
            ReadIos++;
            ReadLatency.Record(ns);
        }
    }

    private void CheckOrRecord(int slot, ulong block, bool write)
    {
        if (write)
        {
            _ledger!.SetGeneration(block, _generation[slot]);
            return;
        }
        uint expected = _ledger!.Generation(block);
        if (expected == 0) return;
        ulong deviceOffset = _rangeOffset + (_domainStart + block) * _bs;
        VerifiedBlocks++;
        long at = VerifyPattern.FirstMismatch(_buffers[slot].Pointer, _bs, deviceOffset, expected, _options.Seed);
        if (at < 0) return;
        VerifyMismatches++;
        FirstError ??= $"queue {Index}: verify failed at byte {deviceOffset + (ulong)at} (block at {deviceOffset}, write generation {expected})";
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ulong ToNanoseconds(long ticks) => ticks <= 0 ? 0 : _nsPerTick == 1.0 ? (ulong)ticks : (ulong)(ticks * _nsPerTick);

    /// <summary>xorshift64*: fast, good enough to spread offsets, no allocation.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ulong NextRandom(ulong bound)
    {
        ulong x = _rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        _rng = x;
        // Lemire's multiply-shift maps the 64-bit value onto [0, bound) without a division.
        return (ulong)(((UInt128)(x * 0x2545_F491_4F6C_DD1DUL) * bound) >> 64);
    }

    private bool NextRandomBlock(out ulong block)
    {
        block = NextRandom(_domainBlocks);
        if (_ledger is null || !_ledger.IsBusy(block)) return true;
        // Verify: skip blocks with a request in flight (a few probes, then a scan).
        for (int i = 0; i < 8; i++)
        {
            block = NextRandom(_domainBlocks);
            if (!_ledger.IsBusy(block)) return true;
        }
        for (ulong i = 0; i < _domainBlocks; i++)
        {
            block = (block + 1) % _domainBlocks;
            if (!_ledger.IsBusy(block)) return true;
        }
        return false;
    }

    private ulong NextSequential()
    {
        ulong block = _seqCursor;
        _seqCursor = _seqCursor + 1 == _domainBlocks ? 0 : _seqCursor + 1;
        return block;
    }

    /// <summary>The next block (walking the slice once, from the start) that this job wrote.</summary>
    private bool NextWritten(out ulong block)
    {
        while (_seqCursor < _domainBlocks)
        {
            block = _seqCursor++;
            if (_ledger!.Generation(block) != 0) return true;
        }
        block = 0;
        return false;
    }
}
