namespace BlkTarget.Management;

/// <summary>
/// The model plus persistence: every successful change is written to <see cref="PersistPath"/> (when there is
/// one) before the call returns; a change whose write fails is undone (creates) or never made (deletes: the file
/// is written first), and reported as <see cref="RpcErrorCode.PersistFailed"/>. One change at a time.
/// </summary>
public sealed class ManagementService(TargetModel model, ConfigStore store, string? persistPath)
{
    public TargetModel Model { get; } = model;

    /// <summary>Where `stats` resets are kept (the counters themselves only grow).</summary>
    public Monitoring.StatsBaseline StatsBaseline { get; } = new();

    /// <summary>The config file changes are written to: the --config file, or --config-out; null: none.</summary>
    public string? PersistPath { get; } = persistPath;

    public ManagedDisk CreateDisk(DiskSpec spec) => Model.Serialised(() =>
    {
        var disk = Model.CreateDisk(spec);
        try
        {
            Persist();
        }
        catch
        {
            Model.DeleteDisk(spec.Name, removeCreatedFile: true);
            throw;
        }
        return disk;
    });

    public void DeleteDisk(string name) => Model.Serialised(() =>
    {
        Model.DeleteDisk(name, commit: () => Persist(withoutDisk: name));
        return 0;
    });

    public ManagedExport CreateExport(ExportSpec spec) => Model.Serialised(() =>
    {
        var export = Model.CreateExport(spec);
        try
        {
            Persist();
        }
        catch
        {
            Model.DeleteExport(spec.Name);
            throw;
        }
        return export;
    });

    public void DeleteExport(string name) => Model.Serialised(() =>
    {
        Model.DeleteExport(name, commit: () => Persist(withoutExport: name));
        return 0;
    });

    /// <summary>Grows a disk (<see cref="TargetModel.ResizeDisk"/>). A RAM disk's spec names its size, so its new spec is
    /// persisted first and restored if the resize fails; a file or image holds its size itself.</summary>
    public IReadOnlyList<string> ResizeDisk(string name, ulong newSizeBytes) => Model.Serialised(() =>
    {
        var disk = Model.Disks.FirstOrDefault(d => d.Spec.Name == name) ?? throw new ManagementException(RpcErrorCode.NotFound, $"no disk {name}");
        var old = disk.Spec;
        if (old.Backend.Kind == "ram")
        {
            disk.Spec = old with { Backend = old.Backend with { SizeBytes = newSizeBytes } };
            try
            {
                Persist();
            }
            catch
            {
                disk.Spec = old;
                throw;
            }
        }
        try
        {
            return Model.ResizeDisk(name, newSizeBytes);
        }
        catch
        {
            if (disk.Spec != old)
            {
                disk.Spec = old;
                try { Persist(); }
                catch (ManagementException) { }    // the file keeps the larger size; the next change rewrites it
            }
            throw;
        }
    });

    /// <summary>Hot-adds a LUN (<see cref="TargetModel.AddLun"/>); the new export spec is persisted before the guest sees it.</summary>
    public void AddLun(string export, ScsiLunSpec lun) => Model.Serialised(() =>
    {
        Model.AddLun(export, lun, next => PersistExport(export, next));
        return 0;
    });

    /// <summary>Hot-removes a LUN (<see cref="TargetModel.RemoveLun"/>); persisted before the guest loses it.</summary>
    public void RemoveLun(string export, int target, int lun) => Model.Serialised(() =>
    {
        Model.RemoveLun(export, target, lun, next => PersistExport(export, next));
        return 0;
    });

    /// <summary>Changes QoS limits at run time (<see cref="TargetModel.SetQos"/>) and persists them; if the write
    /// fails the old limits are restored.</summary>
    public void SetQos(bool disk, string name, Vhost.Qos.QosLimits limits) => Model.Serialised(() =>
    {
        var old = Model.SetQos(disk, name, limits);
        try
        {
            Persist();
        }
        catch
        {
            Model.SetQos(disk, name, old);
            throw;
        }
        return 0;
    });

    /// <summary>Persists the model with export <paramref name="name"/> described by <paramref name="next"/>; returns
    /// how to undo that if the change itself then fails.</summary>
    private Action PersistExport(string name, ExportSpec next)
    {
        var export = Model.Exports.First(e => e.Spec.Name == name);
        var old = export.Spec;
        export.Spec = next;
        try
        {
            Persist();
        }
        catch
        {
            export.Spec = old;
            throw;
        }
        return () =>
        {
            export.Spec = old;
            try { Persist(); }
            catch (ManagementException) { }
        };
    }

    /// <summary>Writes the configuration to <paramref name="path"/>, or to <see cref="PersistPath"/> when null;
    /// returns the path written. Errors: InvalidParams (no path anywhere), PersistFailed.</summary>
    public string SaveConfig(string? path) => Model.Serialised(() =>
    {
        string target = path ?? PersistPath
            ?? throw new ManagementException(RpcErrorCode.InvalidParams, "the target was started without --config or --config-out: give a path");
        store.Save(Model, target);
        return Path.GetFullPath(target);
    });

    private void Persist(string? withoutDisk = null, string? withoutExport = null)
    {
        if (PersistPath is not null) store.Save(Model, PersistPath, withoutDisk, withoutExport);
    }
}
