using System.CommandLine;
using BlkTarget.Configuration;
using BlkTarget.Vhost.Frontend;

namespace BlkTarget.Bench;

/// <summary>
/// `blktarget bench`: a host-side vhost-user-blk load generator (fio-like job options) that drives any
/// vhost-user-blk socket: ours, qemu-storage-daemon, SPDK. Exit status 0 on success, 1 when the job cannot
/// run, 2 when requests failed or verification found a mismatch.
/// </summary>
public static class BenchCommand
{
    private static readonly Option<string?> Socket = new("--socket") { Description = "vhost-user-blk socket to drive" };
    private static readonly Option<string> Rw = new("--rw") { Description = "randread, randwrite, read, write or randrw", DefaultValueFactory = _ => "randread" };
    private static readonly Option<int> RwMixRead = new("--rwmixread") { Description = "Percentage of reads with --rw randrw", DefaultValueFactory = _ => 50 };
    private static readonly Option<string> Bs = new("--bs") { Description = "Request size (4k, 128k, 1M, bytes)", DefaultValueFactory = _ => "4k" };
    private static readonly Option<int> IoDepth = new("--iodepth") { Description = "Requests in flight per queue", DefaultValueFactory = _ => 1 };
    private static readonly Option<int> Queues = new("--queues") { Description = "Virtqueues to drive, one thread each", DefaultValueFactory = _ => 1 };
    private static readonly Option<double?> Runtime = new("--runtime") { Description = "Seconds to measure (after the ramp); default 10 unless --size is given" };
    private static readonly Option<string?> Size = new("--size") { Description = "Bytes to transfer over all queues (e.g. 1G); the job ends when done" };
    private static readonly Option<double> Ramp = new("--ramp") { Description = "Seconds of warm-up not counted (time-based jobs)", DefaultValueFactory = _ => 1.0 };
    private static readonly Option<string?> OffsetRange = new("--offset-range") { Description = "Part of the device to address: OFFSET[:LENGTH], e.g. 0:256M (default: all of it)" };
    private static readonly Option<bool> Verify = new("--verify") { Description = "Stamp every write and check every read (queues get disjoint slices)" };
    private static readonly Option<bool> Json = new("--json") { Description = "Print the result as JSON" };
    private static readonly Option<int?> TargetPid = new("--target-pid") { Description = "Report this process's CPU seconds over the measured window" };
    private static readonly Option<int> QueueSize = new("--queue-size") { Description = "Virtqueue size (power of two); default fits the depth" };
    private static readonly Option<int> IdlePollUs = new("--idle-poll-us") { Description = "Microseconds a driver thread polls without completions before it sleeps on the call eventfd; -1 polls only", DefaultValueFactory = _ => 100 };
    private static readonly Option<string?> Cpus = new("--cpus") { Description = "CPUs to pin the driver threads to, round-robin (e.g. 0 or 0-1)" };
    private static readonly Option<int> Segments = new("--segments") { Description = "Data segments per request (e.g. 515 small ones, as Windows guests send); default: as few as the device's size_max allows" };
    private static readonly Option<bool> Packed = new("--packed") { Description = "Drive packed virtqueues (VIRTIO_F_RING_PACKED, virtio 1.2 2.8) instead of split ones" };
    private static readonly Option<bool> HugePages = new("--hugepages") { Description = "Guest memory in 2 MiB hugetlb pages (like QEMU's memory-backend-memfd,hugetlb=on); needs reserved huge pages" };
    private static readonly Option<bool> Prefill = new("--prefill") { Description = "Write the whole range once before a job that reads" };
    private static readonly Option<string?> WarmUpSocket = new("--warm-up-socket") { Description = "Drive this other socket with the same job first (--warm-up seconds, not reported), so this process is warm when it connects to --socket" };
    private static readonly Option<double> WarmUp = new("--warm-up") { Description = "Seconds to drive --warm-up-socket", DefaultValueFactory = _ => 2.0 };
    private static readonly Option<ulong?> Seed = new("--seed") { Description = "Seed for offsets and verify patterns" };

    public static Command Create()
    {
        var command = new Command("bench", "Drive a vhost-user-blk socket with a fio-like job and report IOPS, bandwidth and latency")
        {
            Socket, Rw, RwMixRead, Bs, IoDepth, Queues, Runtime, Size, Ramp, OffsetRange, Verify, Json, TargetPid, QueueSize, IdlePollUs, Cpus, Seed, Segments, HugePages, Packed, Prefill, WarmUpSocket, WarmUp,
        };
        command.SetAction(Run);
        return command;
    }

    private static int Run(ParseResult parse)
    {
        BenchOptions options;
        try
        {
            options = Build(parse);
            options.Validate();
        }
        catch (ArgumentException e)
        {
            return Program.Fail(e.Message);
        }

        var stop = new StopSignal();
        ConsoleCancelEventHandler onCancel = (_, e) =>
        {
            e.Cancel = true;
            stop.Set();
        };
        Console.CancelKeyPress += onCancel;
        BenchResult result;
        try
        {
            result = BenchRunner.Run(options, stop);
        }
        catch (Exception e) when (e is BenchSetupException or VhostUserFrontendException or TimeoutException or IOException)
        {
            return Program.Fail(e.Message);
        }
        finally
        {
            Console.CancelKeyPress -= onCancel;
        }
        Console.Out.Write(options.Json ? BenchReport.Json(result) + Environment.NewLine : BenchReport.Text(result));
        return result.Failed ? 2 : 0;
    }

    internal static BenchOptions Build(ParseResult parse)
    {
        string socket = parse.GetValue(Socket) ?? throw new ArgumentException("--socket is required");
        string rwText = parse.GetValue(Rw)!;
        if (!BenchOptions.TryParseRw(rwText, out var rw)) throw new ArgumentException($"--rw '{rwText}': expected randread, randwrite, read, write or randrw");
        uint bs = ParseSize("--bs", parse.GetValue(Bs)!) is var b && b <= uint.MaxValue ? (uint)b : throw new ArgumentException("--bs is too large");
        ulong? size = parse.GetValue(Size) is { } sizeText ? ParseSize("--size", sizeText) : null;
        ulong offset = 0;
        ulong? length = null;
        if (parse.GetValue(OffsetRange) is { } range)
        {
            var parts = range.Split(':');
            if (parts.Length > 2) throw new ArgumentException($"--offset-range '{range}': expected OFFSET[:LENGTH]");
            offset = ParseSize("--offset-range", parts[0]);
            if (parts.Length == 2) length = ParseSize("--offset-range", parts[1]);
        }
        List<int>? cpus = null;
        if (parse.GetValue(Cpus) is { } cpuText && !CpuListParser.TryParse(cpuText, out cpus, out var cpuError))
            throw new ArgumentException($"--cpus: {cpuError}");
        double? runtime = parse.GetValue(Runtime);
        double ramp = parse.GetValue(Ramp);
        if (runtime is <= 0 or > 86400) throw new ArgumentException("--runtime must be between 0 and 86400 seconds");
        if (ramp is < 0 or > 3600) throw new ArgumentException("--ramp must be between 0 and 3600 seconds");
        if (parse.GetValue(WarmUp) is <= 0 or > 3600) throw new ArgumentException("--warm-up must be between 0 and 3600 seconds");
        var options = new BenchOptions
        {
            Socket = socket,
            Rw = rw,
            RwMixRead = parse.GetValue(RwMixRead),
            BlockSize = bs,
            IoDepth = parse.GetValue(IoDepth),
            Queues = parse.GetValue(Queues),
            Runtime = runtime is double r ? TimeSpan.FromSeconds(r) : null,
            SizeBytes = size,
            Ramp = TimeSpan.FromSeconds(ramp),
            RangeOffset = offset,
            RangeLength = length,
            Verify = parse.GetValue(Verify),
            Json = parse.GetValue(Json),
            TargetPid = parse.GetValue(TargetPid),
            QueueSize = parse.GetValue(QueueSize),
            Segments = parse.GetValue(Segments),
            HugePages = parse.GetValue(HugePages),
            Packed = parse.GetValue(Packed),
            Prefill = parse.GetValue(Prefill),
            WarmUpSocket = parse.GetValue(WarmUpSocket),
            WarmUp = TimeSpan.FromSeconds(parse.GetValue(WarmUp)),
            IdlePollMicroseconds = parse.GetValue(IdlePollUs),
            Cpus = cpus,
        };
        if (parse.GetValue(Seed) is ulong seed) options = options with { Seed = seed };
        return options;
    }

    private static ulong ParseSize(string option, string text)
    {
        // fio writes 4k / 128k / 1m; SizeParser knows K/M/G(iB) in either case.
        if (!SizeParser.TryParse(text, out ulong value))
            throw new ArgumentException($"{option}: '{text}' is not a size such as 4k, 128k or 1G");
        return value;
    }
}
