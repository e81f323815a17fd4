using BlkTarget.Bench;
using BlkTarget.Storage.Ram;
using BlkTarget.Vhost.Blk;
using BlkTarget.Vhost.Protocol;
using BlkTarget.Vhost.Reactor;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlkTarget.Hosting;

/// <summary>
/// Runs the vhost-user-blk data path for a moment at start, before any export listens: a private RAM disk served on
/// a private socket, driven by the built-in load generator (4 KiB random reads and writes, 32 in flight).
/// Why: .NET compiles a method quickly without optimisation first (tier 0) and recompiles it with full optimisation
/// (tier 1) only after 30 calls and once no new method has been compiled for 100 ms. A guest that starts its I/O
/// the moment the target is up ran its first second on tier-0 code (measured: 77-86% of the steady rate after
/// the streaming-store change); after this warm-up the same methods are already at tier 1 (or queued for it) when
/// the first guest connects. Costs about half a second of start-up; <c>--no-warm-up</c> skips it.
/// </summary>
internal static class DataPathWarmUp
{
    /// <summary>The default length of the warm-up I/O.</summary>
    public static readonly TimeSpan DefaultDuration = TimeSpan.FromMilliseconds(300);

    /// <summary>Runs the warm-up for <paramref name="duration"/> on <paramref name="reactors"/> (reactor 0). A failure
    /// is logged and ignored: the target works without it, only its first second is slower.</summary>
    public static void Run(ReactorPool reactors, TimeSpan duration, ILogger log)
    {
        if (duration <= TimeSpan.Zero) return;
        string directory = Directory.CreateTempSubdirectory("blktarget-warm-up-").FullName;
        try
        {
            using var disk = new RamDisk(16 << 20, pages: RamDiskPages.Small);
            var device = new VirtioBlkDevice("warm-up", disk, new BlkOptions { Queues = 1, Serial = "warm-up" }, NullLogger.Instance);
            string socket = Path.Combine(directory, "warm-up.sock");
            using (VhostUserServer.Start(socket, device, reactors, 0, NullLogger.Instance))
            {
                var result = BenchRunner.Run(new BenchOptions
                {
                    Socket = socket, Rw = RwMode.RandRw, BlockSize = 4096, IoDepth = 32, Runtime = duration,
                    Ramp = TimeSpan.Zero, RangeLength = 16 << 20, IdlePollMicroseconds = 100,
                });
                if (result.Failed) log.LogWarning("data path warm-up failed (the first second of I/O may be slower): {Error}", result.FirstError);
                else log.LogInformation("data path warmed up: {Requests} requests in {Ms} ms", result.All.Ios, duration.TotalMilliseconds);
            }
        }
        catch (Exception e)
        {
            // Any failure (a socket error is not an IOException, for one): the warm-up is an optimisation, and the
            // target must start without it.
            log.LogWarning("data path warm-up skipped (the first second of I/O may be slower): {Error}", e.Message);
        }
        finally
        {
            try { Directory.Delete(directory, recursive: true); }
            catch (IOException) { }
        }
    }
}
