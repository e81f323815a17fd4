namespace BlkTarget.Bench;

/// <summary>One queue's share of a job.</summary>
public sealed record QueueResult(int Index, long ReadIos, long WriteIos, double Seconds, long Sleeps)
{
    public double Iops => Seconds > 0 ? (ReadIos + WriteIos) / Seconds : 0;
}

/// <summary>Latency and throughput of one direction (or of all requests).</summary>
public sealed record DirectionResult(long Ios, double Iops, double BytesPerSecond, double MeanNs, ulong MinNs, ulong P50Ns, ulong P90Ns,
    ulong P99Ns, ulong P999Ns, ulong MaxNs)
{
    public static DirectionResult From(LatencyHistogram h, double iops, uint blockSize) => new(
        h.Count, iops, iops * blockSize, h.Mean, h.Count == 0 ? 0 : h.Min, h.Percentile(0.50), h.Percentile(0.90),
        h.Percentile(0.99), h.Percentile(0.999), h.Max);
}

/// <summary>Everything a job measured, merged over its queues.</summary>
public sealed record BenchResult
{
    public required BenchOptions Options { get; init; }
    public required DeviceFacts Device { get; init; }
    public required IReadOnlyList<QueueResult> Queues { get; init; }
    public DirectionResult? Read { get; init; }
    public DirectionResult? Write { get; init; }
    public required DirectionResult All { get; init; }
    /// <summary>Wall-clock seconds over which CPU time was sampled (the measured window).</summary>
    public double CpuWindowSeconds { get; init; }
    public double? LoadGeneratorCpuSeconds { get; init; }
    public double? TargetCpuSeconds { get; init; }
    public long Errors { get; init; }
    public long VerifiedBlocks { get; init; }
    public long VerifyMismatches { get; init; }
    public string? FirstError { get; init; }

    public bool Failed => Errors > 0 || VerifyMismatches > 0;

    internal static BenchResult From(BenchOptions options, DeviceFacts device, IReadOnlyList<QueueWorker> workers, double cpuWindow,
        double? selfCpu, double? targetCpu)
    {
        var read = new LatencyHistogram();
        var write = new LatencyHistogram();
        var all = new LatencyHistogram();
        double readIops = 0, writeIops = 0;
        var queues = new List<QueueResult>();
        foreach (var w in workers)
        {
            read.Add(w.ReadLatency);
            write.Add(w.WriteLatency);
            double seconds = w.MeasuredSeconds;
            if (seconds > 0)
            {
                readIops += w.ReadIos / seconds;
                writeIops += w.WriteIos / seconds;
            }
            queues.Add(new QueueResult(w.Index, w.ReadIos, w.WriteIos, seconds, w.Sleeps));
        }
        all.Add(read);
        all.Add(write);
        return new BenchResult
        {
            Options = options,
            Device = device,
            Queues = queues,
            Read = read.Count > 0 || options.Reads ? DirectionResult.From(read, readIops, options.BlockSize) : null,
            Write = write.Count > 0 || options.Writes ? DirectionResult.From(write, writeIops, options.BlockSize) : null,
            All = DirectionResult.From(all, readIops + writeIops, options.BlockSize),
            CpuWindowSeconds = cpuWindow,
            LoadGeneratorCpuSeconds = selfCpu,
            TargetCpuSeconds = targetCpu,
            Errors = workers.Sum(w => w.Errors),
            VerifiedBlocks = workers.Sum(w => w.VerifiedBlocks),
            VerifyMismatches = workers.Sum(w => w.VerifyMismatches),
            FirstError = workers.Select(w => w.FirstError).FirstOrDefault(e => e is not null),
        };
    }
}
