using BlkTarget.Configuration;

namespace BlkTarget.Management;

/// <summary>
/// Applies a reloaded config file to the running model, the way RPCs would: exports no longer in the file are deleted
/// (their frontends drained and disconnected), then disks no longer in the file, then new disks and new exports are
/// created. An export or disk whose definition changed is replaced only while nothing depends on it (no connected
/// frontend; no export using the disk); otherwise the change is refused and reported, and the rest still applies.
/// Global settings (cpus, idle poll, drain timeout, socket access) need a restart and are reported when changed.
/// </summary>
public static class ConfigReload
{
    /// <summary>What a reload did (one line each) and what it refused.</summary>
    public sealed record Outcome(IReadOnlyList<string> Applied, IReadOnlyList<string> Refused);

    public static Outcome Apply(TargetModel model, TargetSettings next)
    {
        var applied = new List<string>();
        var refused = new List<string>();
        ModelPlan plan;
        try
        {
            plan = ModelPlan.From(next);
        }
        catch (ConfigurationException e)
        {
            return new Outcome([], [e.Message]);
        }
        var wantedDisks = plan.Disks.ToDictionary(d => d.Name);
        var wantedExports = plan.Exports.ToDictionary(e => e.Name);

        // QoS limits change in place, like qos_set: no export is replaced for them.
        foreach (var disk in model.Disks)
            if (wantedDisks.TryGetValue(disk.Spec.Name, out var wanted) && wanted.Qos != disk.Spec.Qos && SameDisk(wanted, disk.Spec))
                Try(() => model.SetQos(true, disk.Spec.Name, wanted.Qos), $"disk {disk.Spec.Name}: QoS {wanted.Qos}", applied, refused);
        foreach (var export in model.Exports)
            if (wantedExports.TryGetValue(export.Spec.Name, out var wanted) && wanted.Qos != export.Spec.Qos && SameExport(wanted, export.Spec))
                Try(() => model.SetQos(false, export.Spec.Name, wanted.Qos), $"export {export.Spec.Name}: QoS {wanted.Qos}", applied, refused);
        foreach (var export in model.Exports)
        {
            if (wantedExports.TryGetValue(export.Spec.Name, out var wanted) && SameExport(wanted, export.Spec)) continue;
            if (wantedExports.ContainsKey(export.Spec.Name) && export.Server.HasFrontend)
            {
                refused.Add($"export {export.Spec.Name} changed but a frontend is connected: not replaced (delete it over RPC, or restart)");
                wantedExports.Remove(export.Spec.Name);
                continue;
            }
            Try(() => model.DeleteExport(export.Spec.Name), $"export {export.Spec.Name} deleted", applied, refused);
        }
        foreach (var disk in model.Disks)
        {
            if (wantedDisks.TryGetValue(disk.Spec.Name, out var wanted) && SameDisk(wanted, disk.Spec)) continue;
            if (disk.AttachedTo.Count > 0)
            {
                refused.Add($"disk {disk.Spec.Name} {(wantedDisks.ContainsKey(disk.Spec.Name) ? "changed" : "was removed")} but export {disk.AttachedTo[0]} uses it: kept");
                wantedDisks.Remove(disk.Spec.Name);
                continue;
            }
            Try(() => model.DeleteDisk(disk.Spec.Name), $"disk {disk.Spec.Name} deleted", applied, refused);
        }
        var existingDisks = model.Disks.Select(d => d.Spec.Name).ToHashSet();
        foreach (var disk in wantedDisks.Values.Where(d => !existingDisks.Contains(d.Name)))
            Try(() => model.CreateDisk(disk with { CreateSize = File.Exists(disk.Backend.Path ?? "") ? null : disk.CreateSize }),
                $"disk {disk.Name} created ({disk.Backend.ToSpec()})", applied, refused);
        var existingExports = model.Exports.Select(e => e.Spec.Name).ToHashSet();
        foreach (var export in wantedExports.Values.Where(e => !existingExports.Contains(e.Name)))
            Try(() => model.CreateExport(export), $"export {export.Name} created on {export.Socket}", applied, refused);
        return new Outcome(applied, refused);
    }

    /// <summary>Equal field by field, LUN lists by their elements; QoS limits aside (they change in place).</summary>
    private static bool SameExport(ExportSpec a, ExportSpec b) =>
        a with { Luns = [], Qos = b.Qos } == b with { Luns = [] } && a.Luns.SequenceEqual(b.Luns);

    /// <summary>Equal apart from <see cref="DiskSpec.CreateSize"/>: a file created at first start is simply opened later.</summary>
    private static bool SameDisk(DiskSpec a, DiskSpec b) => a with { CreateSize = null, Qos = b.Qos } == b with { CreateSize = null };

    private static void Try(Action change, string done, List<string> applied, List<string> refused)
    {
        try
        {
            change();
            applied.Add(done);
        }
        catch (ManagementException e)
        {
            refused.Add(e.Message);
        }
    }
}
