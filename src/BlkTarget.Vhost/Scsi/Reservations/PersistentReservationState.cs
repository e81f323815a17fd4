namespace BlkTarget.Vhost.Scsi.Reservations;

/// <summary>
/// The persistent reservation state of one logical unit (one disk, however many exports serve it): the current
/// <see cref="ReservationSnapshot"/>, published through a volatile reference, and its APTPL sidecar file when the
/// disk has one. Commands read <see cref="Current"/> (lock-free, allocation-free); PERSISTENT RESERVE OUT replaces it
/// with compare-and-swap (<see cref="Apply"/>), then establishes the unit attentions of the transition.
/// </summary>
public sealed class PersistentReservationState
{
    private readonly ReservationSidecar? _sidecar;
    private ReservationSnapshot _current;

    /// <param name="sidecar">Where APTPL state is kept (file and image disks); null: APTPL 1 is refused (PTPL_C 0).
    /// Its saved state is loaded here (throws <see cref="InvalidDataException"/> or <see cref="IOException"/>).</param>
    public PersistentReservationState(ReservationSidecar? sidecar = null)
    {
        _sidecar = sidecar;
        _current = sidecar?.Load() ?? ReservationSnapshot.Empty;
    }

    public ReservationSnapshot Current => Volatile.Read(ref _current);

    /// <summary>PTPL_C: APTPL can be honoured.</summary>
    public bool PersistenceAvailable => _sidecar is not null;

    /// <summary>
    /// Runs the transition of <paramref name="request"/> from <paramref name="nexus"/> (<see cref="ReserveOutRules"/>)
    /// on the current state and publishes the result, retrying when another PERSISTENT RESERVE OUT got in first.
    /// <paramref name="persist"/>: the change must reach the sidecar (APTPL was or is set) before the command completes.
    /// </summary>
    public ReserveOutOutcome Apply(ScsiNexus nexus, in ReserveOutRequest request, out bool persist)
    {
        while (true)
        {
            var before = Current;
            var outcome = ReserveOutRules.Apply(before, nexus, request, PersistenceAvailable);
            persist = false;
            if (outcome.NewState is not { } after) return outcome;
            if (!ReferenceEquals(Interlocked.CompareExchange(ref _current, after, before), before)) continue;
            foreach (var attention in outcome.Attentions) attention.Nexus.RaiseUnitAttention(attention.Sense);
            persist = _sidecar is not null && (before.Aptpl || after.Aptpl);
            return outcome;
        }
    }

    /// <summary>Writes the current state to the sidecar file (blocks: helper thread only). The latest state is
    /// written, so a save queued for an older change also covers every change before it.</summary>
    public void Save() => _sidecar?.Save(Current);
}
