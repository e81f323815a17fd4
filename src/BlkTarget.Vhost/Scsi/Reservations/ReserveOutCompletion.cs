using System.Diagnostics;
using BlkTarget.Storage;
using BlkTarget.Storage.Offload;

namespace BlkTarget.Vhost.Scsi.Reservations;

/// <summary>
/// What a PERSISTENT RESERVE OUT waits for before it completes, on the logical unit's helper thread: for PREEMPT AND
/// ABORT, the commands the preempted nexuses still have in flight (they were admitted before the preempt; I/O handed
/// to the kernel cannot be called back, so the command completes only once they did, bounded by
/// <see cref="AbortTimeout"/>); with APTPL, the sidecar write.
/// </summary>
public sealed class ReserveOutCompletion(PersistentReservationState state, IReadOnlyList<ScsiNexus> aborted, bool persist) : IBlockingJob
{
    public static readonly TimeSpan AbortTimeout = TimeSpan.FromSeconds(30);

    public BlockStatus Run()
    {
        long deadline = Stopwatch.GetTimestamp() + (long)(AbortTimeout.TotalSeconds * Stopwatch.Frequency);
        foreach (var nexus in aborted)
            while (nexus.Lun is { InFlight: > 0 } && Stopwatch.GetTimestamp() < deadline) Thread.Sleep(1);
        if (persist) state.Save();
        return BlockStatus.Ok;
    }
}
