using BlkTarget.Storage.Offload;
using BlkTarget.Vhost.Scsi.Atomicity;
using BlkTarget.Vhost.Scsi.Reservations;

namespace BlkTarget.Vhost.Scsi;

/// <summary>
/// What SPC-4 keeps per logical unit and every export of a disk must see as one: the persistent reservation state
/// (a disk created <c>shared</c> and exported twice is one LU behind two target ports), the gate that makes COMPARE AND
/// WRITE atomic against every write to the disk, and the helper thread its
/// blocking work (APTPL sidecar writes, PREEMPT AND ABORT waits) runs on. Created once per disk and handed to every
/// LUN that names it; a LUN defined without one gets its own.
/// </summary>
public sealed class SharedLogicalUnit(string name, ReservationSidecar? sidecar = null) : IDisposable
{
    public string Name { get; } = name;
    public PersistentReservationState Reservations { get; } = new(sidecar);
    /// <summary>COMPARE AND WRITE against every other write to the disk, on every queue of every export.</summary>
    public CompareAndWriteGate Gate { get; } = new();
    /// <summary>The helper thread (started on first use).</summary>
    public BlockingJobQueue Jobs { get; } = new($"lu {name}");

    public void Dispose() => Jobs.Dispose();
}
