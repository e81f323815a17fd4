using System.Text.Json;
using BlkTarget.Configuration;
using BlkTarget.Storage.Interop;

namespace BlkTarget.Management;

/// <summary>
/// Writes the model to a config file in the disks/exports schema, atomically: a temporary file next to it,
/// fsync, rename over the old one, fsync of the directory. A reader (or a restart after a crash) sees the old
/// file or the new one, never a mix. The target-wide settings (cpus, idle poll, drain timeout) are written as
/// the target runs with them. Comments of a hand-written file are not kept.
/// </summary>
public sealed class ConfigStore(TargetSettings settings)
{
    /// <summary>Writes <paramref name="model"/>'s disks and exports (less the named ones, for a delete about to
    /// happen) to <paramref name="path"/>. Throws
    /// <see cref="ManagementException"/> <see cref="RpcErrorCode.PersistFailed"/> with one line.</summary>
    public void Save(TargetModel model, string path, string? withoutDisk = null, string? withoutExport = null)
    {
        string json = Render(model, withoutDisk, withoutExport);
        try
        {
            DurableFile.Replace(path, System.Text.Encoding.UTF8.GetBytes(json));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ManagementException(RpcErrorCode.PersistFailed, $"cannot write config file {path}: {e.Message}");
        }
    }

    /// <summary>The config file text for <paramref name="model"/> as it is now (JSON, indented, newline-terminated).</summary>
    public string Render(TargetModel model, string? withoutDisk = null, string? withoutExport = null)
    {
        var file = new ConfigFile
        {
            Cpus = settings.Cpus.Count > 0 ? string.Join(",", settings.Cpus) : null,
            IdlePollMicroseconds = (int)settings.IdlePoll.TotalMicroseconds,
            DrainTimeoutSeconds = (int)settings.DrainTimeout.TotalSeconds,
            SocketGroup = settings.SocketAccess?.Group,
            SocketMode = settings.SocketAccess?.Mode is { } mode ? "0" + Convert.ToString((int)mode, 8) : null,
            Disks = model.Disks.Where(d => d.Spec.Name != withoutDisk).Select(d => new ConfigFile.DiskEntry
            {
                Name = d.Spec.Name,
                Backend = d.Spec.Backend.ToSpec(),
                BlockSize = d.Spec.BlockSize,
                ReadOnly = d.Spec.ReadOnly ? true : null,
                Shared = d.Spec.Shared ? true : null,
                Qos = ConfigFile.QosEntry.From(d.Spec.Qos),
            }).ToList(),
            Exports = model.Exports.Where(e => e.Spec.Name != withoutExport).Select(e => new ConfigFile.ExportEntry
            {
                Name = e.Spec.Name,
                Kind = e.Spec.Kind,
                Socket = e.Spec.Socket,
                Disk = e.Spec.Disk,
                Queues = e.Spec.Queues,
                Serial = e.Spec.Serial.Length > 0 ? e.Spec.Serial : null,
                WriteCache = e.Spec.Kind == "blk" && !e.Spec.WriteCache ? false : null,
                Luns = e.Spec.Kind == "scsi"
                    ? e.Spec.Luns.Select(l => new ConfigFile.ExportLunEntry
                    {
                        Target = l.Target, Lun = l.Lun, Disk = l.Disk,
                        Serial = l.Serial.Length > 0 ? l.Serial : null,
                        WriteCache = l.WriteCache ? null : false,
                    }).ToList()
                    : null,
                Qos = ConfigFile.QosEntry.From(e.Spec.Qos),
            }).ToList(),
        };
        return JsonSerializer.Serialize(file, ConfigFile.Options) + "\n";
    }
}
