using BlkTarget.Management;
using BlkTarget.Vhost.Blk;
using BlkTarget.Vhost.Scsi;
using BlkTarget.Vhost.Stats;

namespace BlkTarget.Monitoring;

/// <summary>One set of request counters of an export: its vhost-user queue index (virtio-scsi request queues start at
/// 2), the disk the requests went to (null: SCSI commands that reached no LUN) and the counters.</summary>
public sealed record CounterSource(string Export, int Queue, string? Disk, QueueCounters Counters)
{
    /// <summary>Every counter set of <paramref name="export"/>: one per queue for blk, one per queue and LUN (plus the
    /// unaddressed ones) for scsi. A LUN removed at run time takes its counts out of the export's totals.</summary>
    public static IEnumerable<CounterSource> Of(ManagedExport export)
    {
        string name = export.Spec.Name;
        switch (export.Device)
        {
            case VirtioBlkDevice blk:
                for (int q = 0; q < blk.Context.Counters.Count; q++) yield return new(name, q, export.Spec.Disk, blk.Context.Counters[q]);
                break;
            case VirtioScsiDevice scsi:
                var context = scsi.Context;
                foreach (var lun in context.Luns)
                {
                    string? disk = export.Spec.Luns.FirstOrDefault(l => l.Target == lun.Target && l.Lun == lun.Lun)?.Disk;
                    for (int q = 0; q < lun.Counters.Count; q++) yield return new(name, q + VirtioScsi.FirstRequestQueue, disk, lun.Counters[q]);
                }
                for (int q = 0; q < context.UnaddressedCounters.Count; q++)
                    yield return new(name, q + VirtioScsi.FirstRequestQueue, null, context.UnaddressedCounters[q]);
                break;
        }
    }
}
