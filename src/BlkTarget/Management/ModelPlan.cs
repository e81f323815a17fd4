using BlkTarget.Configuration;

namespace BlkTarget.Management;

/// <summary>
/// What a <see cref="TargetSettings"/> asks the model for: the disks to open and the exports to start, in order.
/// A device of the original `devices` schema becomes its disk(s) plus one export of the device's name: a blk
/// device's disk takes the device's name, a scsi device's LUN disks are named DEVICE (one LUN) or DEVICE-T-L.
/// </summary>
public sealed record ModelPlan(IReadOnlyList<DiskSpec> Disks, IReadOnlyList<ExportSpec> Exports)
{
    public static ModelPlan From(TargetSettings settings)
    {
        var disks = new List<DiskSpec>();
        var exports = new List<ExportSpec>();
        foreach (var device in settings.Devices)
        {
            if (device.Kind == "scsi")
            {
                var luns = new List<ScsiLunSpec>();
                foreach (var lun in device.Luns)
                {
                    string disk = device.Luns.Count == 1 ? device.Name : $"{device.Name}-{lun.Target}-{lun.Lun}";
                    disks.Add(new DiskSpec { Name = disk, Backend = lun.Backend, CreateSize = lun.CreateSize, BlockSize = lun.BlockSize, ReadOnly = lun.ReadOnly });
                    luns.Add(new ScsiLunSpec { Target = lun.Target, Lun = lun.Lun, Disk = disk, Serial = lun.Serial, WriteCache = lun.WriteCache });
                }
                exports.Add(new ExportSpec { Name = device.Name, Kind = "scsi", Socket = device.Socket, Queues = device.Queues, Serial = device.Serial, Luns = luns });
            }
            else
            {
                disks.Add(new DiskSpec
                {
                    Name = device.Name, Backend = device.Backend, CreateSize = device.CreateSize, BlockSize = device.BlockSize, ReadOnly = device.ReadOnly,
                });
                exports.Add(new ExportSpec
                {
                    Name = device.Name, Kind = "blk", Socket = device.Socket, Disk = device.Name, Queues = device.Queues, Serial = device.Serial,
                    WriteCache = device.WriteCache,
                });
            }
        }
        disks.AddRange(settings.Disks);
        exports.AddRange(settings.Exports);
        return new ModelPlan(disks, exports);
    }
}
