using System.Diagnostics;
using System.Numerics;
using BlkTarget.Vhost.Blk;
using BlkTarget.Vhost.Frontend;
using BlkTarget.Storage.Interop;
using BlkTarget.Vhost.Protocol;

namespace BlkTarget.Bench;

/// <summary>A job that cannot run against this device (the message is for the user).</summary>
public sealed class BenchSetupException(string message) : Exception(message);

/// <summary>What the device told us during the handshake, as the job uses it.</summary>
public sealed record DeviceFacts(ulong CapacityBytes, uint LogicalBlockSize, int BackendQueues, bool ReadOnly, bool EventIdx, bool Indirect,
    int QueueSize, uint MaxSegmentBytes, int SegmentsPerRequest, bool Packed = false);

/// <summary>
/// Runs one job: connects to the socket as a vhost-user frontend (memfd "guest RAM", one virtqueue per queue),
/// starts one driver thread per queue, samples CPU time over the measured window, stops the device cleanly
/// (GET_VRING_BASE) and returns the merged results.
/// </summary>
public static class BenchRunner
{
    /// <summary>Largest virtqueue used for direct chains (QEMU's VIRTQUEUE_MAX_SIZE; qemu-storage-daemon refuses more).</summary>
    private const int MaxDirectQueueSize = 1024;

    public static BenchResult Run(BenchOptions options, StopSignal? stop = null)
    {
        options.Validate();
        stop ??= new StopSignal();
        if (options.WarmUpSocket is { } warmUpSocket)
        {
            var warmUp = options with
            {
                Socket = warmUpSocket, Runtime = options.WarmUp, SizeBytes = null, Ramp = TimeSpan.Zero, RangeOffset = 0, RangeLength = null,
                Verify = false, Prefill = false, TargetPid = null, WarmUpSocket = null,
            };
            if (Run(warmUp, stop).Failed) throw new BenchSetupException($"--warm-up-socket: the warm-up job on {warmUpSocket} failed");
        }
        if (options.Prefill && options.Reads) PrefillRange(options, stop);
        using var frontend = Connect(options);
        var config = frontend.Config ?? throw new BenchSetupException("the backend did not negotiate VHOST_USER_PROTOCOL_F_CONFIG: device size unknown");
        ulong offered = frontend.FeaturesToAck;
        bool Offered(int bit) => (offered & VirtioFeatures.Bit(bit)) != 0;

        if (frontend.BackendQueueCount < options.Queues)
            throw new BenchSetupException($"the backend offers {frontend.BackendQueueCount} queue(s), the job wants {options.Queues}");
        bool readOnly = Offered(VirtioBlk.FeatureRo);
        if (readOnly && options.Writes) throw new BenchSetupException("the device is read-only and the job writes");
        uint lbs = Offered(VirtioBlk.FeatureBlkSize) && config.BlockSize >= 512 ? config.BlockSize : 512;
        if (options.BlockSize % lbs != 0) throw new BenchSetupException($"--bs {options.BlockSize} is not a multiple of the device's block size {lbs}");
        if (options.RangeOffset % lbs != 0) throw new BenchSetupException($"--offset-range start is not a multiple of the device's block size {lbs}");

        ulong capacity = config.CapacityBytes;
        if (options.RangeOffset >= capacity) throw new BenchSetupException($"--offset-range starts beyond the device ({capacity} bytes)");
        ulong rangeLength = options.RangeLength ?? capacity - options.RangeOffset;
        if (rangeLength > capacity - options.RangeOffset) throw new BenchSetupException($"--offset-range ends beyond the device ({capacity} bytes)");
        ulong rangeBlocks = rangeLength / options.BlockSize;
        if (rangeBlocks < (ulong)options.Queues) throw new BenchSetupException($"the range holds {rangeBlocks} block(s) of {options.BlockSize} bytes, fewer than the queues");
        if (options.Verify && rangeBlocks / (ulong)options.Queues > BlockLedger.MaxBlocks)
            throw new BenchSetupException("--verify: the range is too large to track per block; narrow it with --offset-range");

        // Split each request's buffer to what one descriptor may carry (size_max) and check seg_max.
        uint maxSegment = Offered(VirtioBlk.FeatureSizeMax) && config.SizeMax >= 512 ? Math.Min(config.SizeMax, options.BlockSize) : options.BlockSize;
        maxSegment &= ~511u;
        if (options.Segments > 0)
        {
            // As many segments as asked for (the last one takes the rest), however small: seg_max is a hint.
            uint wanted = (options.BlockSize + (uint)options.Segments - 1) / (uint)options.Segments;
            if (wanted > maxSegment)
                throw new BenchSetupException($"--segments {options.Segments}: segments of {wanted} bytes exceed the device's size_max of {maxSegment}");
            maxSegment = wanted;
        }
        int pieces = (int)((options.BlockSize + maxSegment - 1) / maxSegment);
        if (options.Segments == 0 && Offered(VirtioBlk.FeatureSegMax) && config.SegMax != 0 && pieces > config.SegMax)
            throw new BenchSetupException($"--bs {options.BlockSize} needs {pieces} segments of at most {maxSegment} bytes; the device allows {config.SegMax}");

        // Size the ring for the depth: direct chains while they fit in 1024 entries, indirect tables beyond.
        int perRequest = pieces + 2;
        bool canIndirect = Offered(VirtioFeatures.RingIndirectDesc);
        int queueSize = options.QueueSize;
        bool indirect;
        if (queueSize == 0)
        {
            int needed = options.IoDepth * perRequest;
            indirect = needed > MaxDirectQueueSize && canIndirect;
            queueSize = (int)BitOperations.RoundUpToPowerOf2((uint)Math.Max(128, indirect ? options.IoDepth : needed));
        }
        else
        {
            indirect = options.IoDepth * perRequest > queueSize && canIndirect;
        }
        if ((indirect ? options.IoDepth : options.IoDepth * perRequest) > queueSize)
            throw new BenchSetupException($"--iodepth {options.IoDepth} needs {options.IoDepth * perRequest} descriptors; the queue has {queueSize} and the device offers no indirect descriptors");
        int maxIndirect = indirect ? perRequest : 0;

        ulong perQueueBytes = 16UL * (ulong)queueSize + 4096 + 6 + 2UL * (ulong)queueSize + 64 + 6 + 8UL * (ulong)queueSize + 4096
            + (ulong)queueSize * (ulong)maxIndirect * 16 + 64 + 32UL * (ulong)queueSize + 64
            + (ulong)options.IoDepth * ((ulong)options.BlockSize + 4096);
        using var arena = new GuestMemoryArena(perQueueBytes * (ulong)options.Queues + (2UL << 20), name: "blktarget-bench", hugePages: options.HugePages);
        if (options.Packed && (frontend.OfferedFeatures & VirtioFeatures.Bit(VirtioFeatures.RingPacked)) == 0) throw new BenchSetupException("--packed: the target does not offer VIRTIO_F_RING_PACKED");
        var drivers = new List<QueueDriver>();
        try
        {
            var workers = new QueueWorker[options.Queues];
            for (int q = 0; q < options.Queues; q++)
            {
                QueueDriver driver = options.Packed
                    ? new PackedVirtqueueDriver(arena, q, queueSize, maxIndirect)
                    : new VirtqueueDriver(arena, q, queueSize, maxIndirect);
                drivers.Add(driver);
                var blk = new BlkRequestQueue(driver, arena);
                workers[q] = new QueueWorker(q, blk, arena, options, stop, options.RangeOffset, rangeBlocks, maxSegment, indirect);
            }
            frontend.Start(arena, drivers);
            var device = new DeviceFacts(capacity, lbs, frontend.BackendQueueCount, readOnly,
                frontend.HasFeature(VirtioFeatures.RingEventIdx), indirect, queueSize, maxSegment, pieces, options.Packed);
            BenchResult result;
            using (ConnectionWatch.Start(frontend, stop))
                result = Drive(options, workers, device);
            if (stop.ConnectionLost) throw new BenchSetupException("the target closed the connection during the run");
            frontend.Stop(drivers);
            return result;
        }
        finally
        {
            foreach (var d in drivers) d.Dispose();
        }
    }

    /// <summary>
    /// Writes the job's whole range once, sequentially in 1 MiB requests on one queue (a separate connection, as
    /// targets serve one frontend at a time), so the job's reads hit written data.
    /// </summary>
    private static void PrefillRange(BenchOptions options, StopSignal stop)
    {
        ulong capacity;
        using (var probe = Connect(options))
            capacity = (probe.Config ?? throw new BenchSetupException("the backend did not negotiate VHOST_USER_PROTOCOL_F_CONFIG: device size unknown")).CapacityBytes;
        ulong length = options.RangeLength ?? (capacity > options.RangeOffset ? capacity - options.RangeOffset : 0);
        uint bs = (uint)Math.Min(1UL << 20, length) & ~511u;
        if (bs == 0 || length % bs != 0) bs = 512;
        var fill = options with
        {
            Rw = RwMode.Write,
            BlockSize = bs,
            IoDepth = 4,
            Queues = 1,
            SizeBytes = length,
            Runtime = null,
            Ramp = TimeSpan.Zero,
            RangeLength = length,
            Verify = false,
            Prefill = false,
            Segments = 0,
            TargetPid = null,
        };
        var result = Run(fill, stop);
        if (result.Failed) throw new BenchSetupException("--prefill: writing the range failed");
    }

    private static VhostUserFrontend Connect(BenchOptions options)
    {
        try
        {
            return VhostUserFrontend.Connect(options.Socket, new VhostUserFrontendOptions(), options.ConnectTimeout);
        }
        catch (IOException e)
        {
            throw new BenchSetupException(e.Message);
        }
    }

    private static BenchResult Drive(BenchOptions options, QueueWorker[] workers, DeviceFacts device)
    {
        long rampTicks = (long)(options.EffectiveRamp.TotalSeconds * Stopwatch.Frequency);
        long runTicks = options.EffectiveRuntime == TimeSpan.MaxValue ? -1 : (long)(options.EffectiveRuntime.TotalSeconds * Stopwatch.Frequency);
        long totalIos = options.SizeBytes is { } size ? (long)((size + options.BlockSize - 1) / options.BlockSize) : long.MaxValue;

        var threads = new Thread[workers.Length];
        // A common start a little ahead, so every thread begins (and ends its ramp) at the same moment.
        long start = Stopwatch.GetTimestamp() + Stopwatch.Frequency / 50;
        for (int q = 0; q < workers.Length; q++)
        {
            var worker = workers[q];
            long budget = totalIos == long.MaxValue ? long.MaxValue : totalIos / workers.Length + (q < totalIos % workers.Length ? 1 : 0);
            int? cpu = options.Cpus is { Count: > 0 } cpus ? cpus[q % cpus.Count] : null;
            threads[q] = new Thread(() =>
            {
                try
                {
                    if (cpu is int c) Affinity.PinCurrentThread(c);
                    while (Stopwatch.GetTimestamp() < start) Thread.SpinWait(16);
                    worker.Run(start, rampTicks, runTicks, budget);
                }
                catch (Exception e)
                {
                    worker.Failure = e;
                }
            })
            { IsBackground = true, Name = $"bench-q{q}" };
        }
        foreach (var t in threads) t.Start();

        // CPU time is sampled over the measured window (after the ramp), for this process and the target.
        long measureStart = start + rampTicks;
        long wait = measureStart - Stopwatch.GetTimestamp();
        if (wait > 0) Thread.Sleep(TimeSpan.FromSeconds(wait / (double)Stopwatch.Frequency));
        long cpuStart = Stopwatch.GetTimestamp();
        double? selfBefore = ProcessCpu.SelfSeconds();
        double? targetBefore = options.TargetPid is int pid ? ProcessCpu.Seconds(pid) : null;
        foreach (var t in threads) t.Join();
        double window = (Stopwatch.GetTimestamp() - cpuStart) / (double)Stopwatch.Frequency;
        double? selfCpu = ProcessCpu.SelfSeconds() - selfBefore;
        double? targetCpu = options.TargetPid is int pid2 ? ProcessCpu.Seconds(pid2) - targetBefore : null;

        var failure = workers.Select(w => w.Failure).FirstOrDefault(f => f is not null);
        if (failure is not null)
            throw failure is VirtqueueDeviceException or TimeoutException
                ? new BenchSetupException($"queue failed: {failure.Message}")
                : new InvalidOperationException($"a driver thread failed: {failure.Message}", failure);
        return BenchResult.From(options, device, workers, window, selfCpu, targetCpu);
    }
}

/// <summary>
/// Watches the vhost-user connection while the drivers run (no message is exchanged then): when the target closes
/// it (its export was deleted, it stopped), <see cref="StopSignal.SetConnectionLost"/> makes the drivers give up on
/// requests that will never complete. Only polls the socket for readability; it never reads.
/// </summary>
internal sealed class ConnectionWatch : IDisposable
{
    private readonly Thread _thread;
    private volatile bool _done;

    private ConnectionWatch(VhostUserFrontend frontend, StopSignal stop)
    {
        var socket = frontend.Connection.Socket;
        _thread = new Thread(() =>
        {
            try
            {
                while (!_done)
                {
                    // Readable with nothing to read: the peer closed the connection.
                    if (socket.Poll(200_000, System.Net.Sockets.SelectMode.SelectRead) && socket.Available == 0)
                    {
                        stop.SetConnectionLost();
                        return;
                    }
                }
            }
            catch (Exception e) when (e is System.Net.Sockets.SocketException or ObjectDisposedException)
            {
                stop.SetConnectionLost();
            }
        }) { IsBackground = true, Name = "bench-connection" };
        _thread.Start();
    }

    public static ConnectionWatch Start(VhostUserFrontend frontend, StopSignal stop) => new(frontend, stop);

    public void Dispose()
    {
        _done = true;
        _thread.Join();
    }
}
