namespace BlkTarget.Bench;

/// <summary>The I/O pattern of a job, named as fio names them.</summary>
public enum RwMode
{
    RandRead,
    RandWrite,
    Read,
    Write,
    RandRw,
}

/// <summary>One load-generator job: what to send, how much, and how to report it. Validated by
/// <see cref="Validate"/>; the command line builds it.</summary>
public sealed record BenchOptions
{
    public required string Socket { get; init; }
    public RwMode Rw { get; init; } = RwMode.RandRead;
    /// <summary>Percentage of reads in <see cref="RwMode.RandRw"/>.</summary>
    public int RwMixRead { get; init; } = 50;
    public uint BlockSize { get; init; } = 4096;
    /// <summary>Requests in flight per queue.</summary>
    public int IoDepth { get; init; } = 1;
    public int Queues { get; init; } = 1;
    /// <summary>Measured time (after the ramp); null with <see cref="SizeBytes"/> alone.</summary>
    public TimeSpan? Runtime { get; init; }
    /// <summary>Bytes to transfer over all queues; the job ends when done (or at <see cref="Runtime"/>).</summary>
    public ulong? SizeBytes { get; init; }
    /// <summary>Warm-up before measuring (JIT, page faults on both sides); not counted.</summary>
    public TimeSpan Ramp { get; init; } = TimeSpan.FromSeconds(1);
    /// <summary>Start of the device range the job addresses, in bytes.</summary>
    public ulong RangeOffset { get; init; }
    /// <summary>Length of that range; null: to the end of the device.</summary>
    public ulong? RangeLength { get; init; }
    /// <summary>Stamp written blocks and check what is read back (queues get disjoint slices of the range).</summary>
    public bool Verify { get; init; }
    /// <summary>The load generator's "guest RAM" in 2 MiB hugetlb pages, as QEMU's
    /// memory-backend-memfd,hugetlb=on gives a real VM (needs reserved pages: /proc/sys/vm/nr_hugepages).</summary>
    public bool HugePages { get; init; }
    /// <summary>Drive packed virtqueues (VIRTIO_F_RING_PACKED) instead of split ones; the target must offer them.</summary>
    public bool Packed { get; init; }
    /// <summary>Write the whole range once before a job that reads, so reads hit written data (a RAM disk's
    /// never-written pages are the kernel's zero page, which stays in cache and flatters every read figure).</summary>
    public bool Prefill { get; init; }

    /// <summary>Before the job (and its prefill), drive this other vhost-user-blk socket with the same job for
    /// <see cref="WarmUp"/> (not reported): the load generator's own code is then compiled and hot when it
    /// connects to <see cref="Socket"/>, so a first-second figure measures the target, not this process's JIT.</summary>
    public string? WarmUpSocket { get; init; }

    /// <summary>How long to drive <see cref="WarmUpSocket"/>.</summary>
    public TimeSpan WarmUp { get; init; } = TimeSpan.FromSeconds(2);
    public bool Json { get; init; }
    /// <summary>Process whose CPU time over the measured window is reported (the target).</summary>
    public int? TargetPid { get; init; }
    /// <summary>Virtqueue size; 0 picks one that fits the depth (at least 128).</summary>
    public int QueueSize { get; init; }
    /// <summary>Data segments per request (0: as few as size_max allows). Many small segments test what Windows
    /// drivers send (they ignore seg_max); the device's seg_max is then not enforced.</summary>
    public int Segments { get; init; }
    /// <summary>How long a driver thread polls the used ring without a completion before it enables interrupts
    /// and sleeps on the call eventfd; negative: poll only (never sleep).</summary>
    public int IdlePollMicroseconds { get; init; } = 100;
    /// <summary>CPUs to pin the driver threads to, round-robin; null: unpinned.</summary>
    public IReadOnlyList<int>? Cpus { get; init; }
    public ulong Seed { get; init; } = 0x5EED_B1C7;
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(5);

    public const int MaxIoDepth = 1024;
    public const int MaxQueues = 64;

    public bool IsTimeBased => Runtime is not null || SizeBytes is null;
    public TimeSpan EffectiveRuntime => Runtime ?? (SizeBytes is null ? TimeSpan.FromSeconds(10) : TimeSpan.MaxValue);
    /// <summary>The ramp applies to time-based jobs only: a sized job counts every byte.</summary>
    public TimeSpan EffectiveRamp => SizeBytes is null ? Ramp : TimeSpan.Zero;

    public bool Reads => Rw is RwMode.RandRead or RwMode.Read or RwMode.RandRw;
    public bool Writes => Rw is RwMode.RandWrite or RwMode.Write or RwMode.RandRw;
    public bool Random => Rw is RwMode.RandRead or RwMode.RandWrite or RwMode.RandRw;

    public static string Name(RwMode mode) => mode.ToString().ToLowerInvariant();

    public static bool TryParseRw(string text, out RwMode mode)
    {
        foreach (var m in Enum.GetValues<RwMode>())
        {
            if (string.Equals(Name(m), text, StringComparison.OrdinalIgnoreCase))
            {
                mode = m;
                return true;
            }
        }
        mode = default;
        return false;
    }

    /// <summary>Throws <see cref="ArgumentException"/> with a message for the user when the job cannot run.</summary>
    public void Validate()
    {
        if (string.IsNullOrEmpty(Socket)) throw new ArgumentException("--socket is required");
        if (BlockSize < 512 || BlockSize % 512 != 0 || BlockSize > 16u << 20)
            throw new ArgumentException($"--bs {BlockSize}: must be a multiple of 512 bytes, at most 16 MiB");
        if (IoDepth is < 1 or > MaxIoDepth) throw new ArgumentException($"--iodepth must be 1..{MaxIoDepth}");
        if (Queues is < 1 or > MaxQueues) throw new ArgumentException($"--queues must be 1..{MaxQueues}");
        if (RwMixRead is < 0 or > 100) throw new ArgumentException("--rwmixread must be 0..100");
        if (Runtime is { } r && r <= TimeSpan.Zero) throw new ArgumentException("--runtime must be positive");
        if (SizeBytes is 0) throw new ArgumentException("--size must be positive");
        if (Ramp < TimeSpan.Zero) throw new ArgumentException("--ramp must not be negative");
        if (RangeOffset % 512 != 0 || RangeLength is { } l && (l == 0 || l % 512 != 0))
            throw new ArgumentException("--offset-range: offset and length must be positive multiples of 512");
        if (QueueSize != 0 && (QueueSize is < 8 or > 32768 || (QueueSize & (QueueSize - 1)) != 0))
            throw new ArgumentException("--queue-size must be a power of two, 8..32768");
        if (TargetPid is { } pid && pid <= 0) throw new ArgumentException("--target-pid must be a process id");
        if (Segments is < 0 or > BlkTarget.Vhost.Frontend.BlkRequestQueue.MaxDataBuffers) throw new ArgumentException($"--segments must be 1..{BlkTarget.Vhost.Frontend.BlkRequestQueue.MaxDataBuffers}");
        if (Segments > 0 && (uint)Segments > BlockSize) throw new ArgumentException("--segments: more segments than bytes in a request");
    }

    public string Describe()
    {
        string amount = SizeBytes is { } s ? $"size={Units.Bytes(s)}" + (Runtime is { } rt ? $" runtime={rt.TotalSeconds:0.###}s" : "")
            : $"runtime={EffectiveRuntime.TotalSeconds:0.###}s ramp={EffectiveRamp.TotalSeconds:0.###}s";
        string mix = Rw == RwMode.RandRw ? $" rwmixread={RwMixRead}" : "";
        return $"rw={Name(Rw)}{mix} bs={Units.Bytes(BlockSize)} iodepth={IoDepth} queues={Queues}{(Segments > 0 ? $" segments={Segments}" : "")} {amount}{(Verify ? " verify" : "")}{(HugePages ? " hugepages" : "")}{(Packed ? " packed" : "")}{(Prefill ? " prefill" : "")}";
    }
}
