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

    private readonly Dictionary<string, ushort> _targetPorts = [];

    /// <summary>
    /// The RELATIVE TARGET PORT IDENTIFIER (SPC-4 7.8.6.6) of export <paramref name="export"/> for this logical unit:
    /// each export of the disk is a target port of its own, numbered 1, 2, ... in the order exports first reach it
    /// (config order at start), and an export keeps its number for the life of the process (a re-created export of
    /// the same name gets it back), so two initiators on two exports see two ports, as multipath and clusters expect.
    /// Management threads only (LUN creation).
    /// </summary>
    public ushort TargetPortFor(string export)
    {
        lock (_targetPorts)
        {
            if (_targetPorts.TryGetValue(export, out ushort port)) return port;
            port = checked((ushort)(_targetPorts.Count + 1));
            _targetPorts.Add(export, port);
            return port;
        }
    }

    public void Dispose() => Jobs.Dispose();
}
