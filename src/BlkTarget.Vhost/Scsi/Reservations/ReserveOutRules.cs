namespace BlkTarget.Vhost.Scsi.Reservations;

/// <summary>
/// The state transitions of PERSISTENT RESERVE OUT (SPC-4 5.14.7 - 5.14.11, 6.16), as a pure function of the current
/// state, the I_T nexus the command came on and the request. Scope is LU_SCOPE only; SPEC_I_PT and ALL_TG_PT are not
/// supported (REPORT CAPABILITIES says SIP_C 0, ATP_C 0); REGISTER AND MOVE is not supported.
/// </summary>
public static class ReserveOutRules
{
    /// <summary>Most registrations a logical unit keeps (a REGISTER beyond it: INSUFFICIENT REGISTRATION RESOURCES).</summary>
    public const int MaxRegistrations = 64;

    /// <param name="persistenceAvailable">Whether APTPL 1 can be honoured (PTPL_C); else REGISTER with APTPL 1 fails
    /// INVALID FIELD IN PARAMETER LIST.</param>
    public static ReserveOutOutcome Apply(ReservationSnapshot s, ScsiNexus nexus, in ReserveOutRequest r, bool persistenceAvailable)
    {
        int me = s.IndexOf(nexus);
        bool registered = me >= 0;
        ulong myKey = registered ? s.Registrations[me].Key : 0;
        switch (r.Action)
        {
            case ReserveOutAction.Register:
            case ReserveOutAction.RegisterAndIgnoreExistingKey:
                if (r.SpecifyInitiatorPorts || r.AllTargetPorts || (r.Aptpl && !persistenceAvailable))
                    return ReserveOutOutcome.Check(SenseCode.InvalidFieldInParameterList);
                if (r.Action == ReserveOutAction.Register && r.Key != myKey) return ReserveOutOutcome.Conflict;
                return registered ? Reregister(s, me, r) : RegisterNew(s, nexus, r);
            case ReserveOutAction.Reserve:
            case ReserveOutAction.Release:
            case ReserveOutAction.Clear:
            case ReserveOutAction.Preempt:
            case ReserveOutAction.PreemptAndAbort:
                if (!registered || r.Key != myKey) return ReserveOutOutcome.Conflict;
                break;
            default:
                return ReserveOutOutcome.Check(SenseCode.InvalidFieldInCdb);
        }
        switch (r.Action)
        {
            case ReserveOutAction.Reserve:
                if (r.Scope != 0 || !ReservationType.IsValid(r.Type)) return ReserveOutOutcome.Check(SenseCode.InvalidFieldInCdb);
                if (!s.Reserved) return ReserveOutOutcome.Changed(new ReservationSnapshot(s.Generation, s.Registrations, r.Type, nexus, s.Aptpl));
                return s.IsHolder(nexus) && s.Type == r.Type ? ReserveOutOutcome.Unchanged : ReserveOutOutcome.Conflict;
            case ReserveOutAction.Release:
                if (!s.IsHolder(nexus)) return ReserveOutOutcome.Unchanged;
                if (r.Scope != 0 || r.Type != s.Type) return ReserveOutOutcome.Check(SenseCode.InvalidReleaseOfPersistentReservation);
                return ReserveOutOutcome.Changed(new ReservationSnapshot(s.Generation, s.Registrations, ReservationType.None, null, s.Aptpl),
                    ReservationType.RegistrantsHaveAccess(s.Type) ? Others(s.Registrations, nexus, SenseCode.ReservationsReleased) : null);
            case ReserveOutAction.Clear:
                return ReserveOutOutcome.Changed(new ReservationSnapshot(s.Generation + 1, [], ReservationType.None, null, s.Aptpl),
                    Others(s.Registrations, nexus, SenseCode.ReservationsPreempted));
            default:
                if (r.Scope != 0 || !ReservationType.IsValid(r.Type)) return ReserveOutOutcome.Check(SenseCode.InvalidFieldInCdb);
                return Preempt(s, nexus, r);
        }
    }

    private static ReserveOutOutcome RegisterNew(ReservationSnapshot s, ScsiNexus nexus, in ReserveOutRequest r)
    {
        if (r.ServiceActionKey == 0) return ReserveOutOutcome.Unchanged;      // unregistering what is not registered
        if (s.Registrations.Length >= MaxRegistrations) return ReserveOutOutcome.Check(SenseCode.InsufficientRegistrationResources);
        Registration[] registrations = [.. s.Registrations, new Registration(r.ServiceActionKey, nexus)];
        return ReserveOutOutcome.Changed(new ReservationSnapshot(s.Generation + 1, registrations, s.Type, s.Holder, r.Aptpl));
    }

    private static ReserveOutOutcome Reregister(ReservationSnapshot s, int me, in ReserveOutRequest r)
    {
        var nexus = s.Registrations[me].Nexus;
        if (r.ServiceActionKey != 0)
        {
            var changed = s.Registrations.ToArray();
            changed[me] = new Registration(r.ServiceActionKey, nexus);
            return ReserveOutOutcome.Changed(new ReservationSnapshot(s.Generation + 1, changed, s.Type, s.Holder, r.Aptpl));
        }
        // Unregistering (SPC-4 5.14.11.2.2): a holder's reservation goes with it, except that an all-registrants one
        // lasts while any registrant is left; releasing a registrants-only one is a unit attention for the others.
        var rest = s.Registrations.Where((_, i) => i != me).ToArray();
        bool releases = s.Reserved && (ReservationType.IsAllRegistrants(s.Type) ? rest.Length == 0 : ReferenceEquals(s.Holder, nexus));
        var state = new ReservationSnapshot(s.Generation + 1, rest, releases ? ReservationType.None : s.Type, releases ? null : s.Holder, r.Aptpl);
        bool notify = releases && s.Type is ReservationType.WriteExclusiveRegistrantsOnly or ReservationType.ExclusiveAccessRegistrantsOnly;
        return ReserveOutOutcome.Changed(state, notify ? Others(rest, nexus, SenseCode.ReservationsReleased) : null);
    }

    /// <summary>PREEMPT and PREEMPT AND ABORT (SPC-4 5.14.11.4): remove the registrations of SERVICE ACTION RESERVATION
    /// KEY (never the issuing nexus's own), taking over the reservation when that key holds it (or, for an
    /// all-registrants reservation, when the key is 0: everyone else is removed).</summary>
    private static ReserveOutOutcome Preempt(ReservationSnapshot s, ScsiNexus nexus, in ReserveOutRequest r)
    {
        ulong victim = r.ServiceActionKey;
        bool allRegistrants = s.Reserved && ReservationType.IsAllRegistrants(s.Type);
        bool takesReservation = s.Reserved && (allRegistrants ? victim == 0 : victim == s.ReservationKey);
        if (victim == 0 && !takesReservation) return ReserveOutOutcome.Check(SenseCode.InvalidFieldInParameterList);
        var kept = new List<Registration>();
        var removed = new List<ScsiNexus>();
        foreach (var reg in s.Registrations)
        {
            bool remove = !ReferenceEquals(reg.Nexus, nexus) && (victim == 0 ? allRegistrants : reg.Key == victim);
            if (remove) removed.Add(reg.Nexus);
            else kept.Add(reg);
        }
        if (removed.Count == 0 && !takesReservation) return ReserveOutOutcome.Conflict;
        var attentions = removed.Select(n => new PendingAttention(n, SenseCode.RegistrationsPreempted)).ToList();
        byte type = s.Type;
        ScsiNexus? holder = s.Holder;
        if (takesReservation)
        {
            if (r.Type != s.Type)
                foreach (var reg in kept)
                    if (!ReferenceEquals(reg.Nexus, nexus)) attentions.Add(new PendingAttention(reg.Nexus, SenseCode.ReservationsReleased));
            type = r.Type;
            holder = nexus;
        }
        var state = new ReservationSnapshot(s.Generation + 1, [.. kept], type, holder, s.Aptpl);
        return ReserveOutOutcome.Changed(state, attentions, r.Action == ReserveOutAction.PreemptAndAbort ? removed : null);
    }

    private static List<PendingAttention> Others(IEnumerable<Registration> registrations, ScsiNexus except, SenseCode sense) =>
        registrations.Where(g => !ReferenceEquals(g.Nexus, except)).Select(g => new PendingAttention(g.Nexus, sense)).ToList();
}
