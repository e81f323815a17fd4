using System.Diagnostics;
using BlkTarget.Management;
using BlkTarget.Storage.Image;
using BlkTarget.Vhost.Stats;

namespace BlkTarget.Monitoring;

/// <summary>The counts of one queue of an export (all its LUNs together).</summary>
public sealed record QueueStats(int Index, int Reactor, CounterSnapshot Counters);

/// <summary>The counts of one export: per queue and in total. <see cref="Source"/>: the object the counts came from
/// (the <see cref="ManagedExport"/>), so a reader that keeps state between two reads can tell an export deleted and
/// created again under the same name (new counters from zero) from the same one; null when unknown.</summary>
public sealed record ExportStats(string Name, string Kind, IReadOnlyList<string> Disks, IReadOnlyList<QueueStats> Queues, CounterSnapshot Total)
{
    public object? Source { get; init; }
}

/// <summary>The counts of one disk over every export and queue that used it. <see cref="AllocatedBytes"/>: space the
/// image's allocated clusters take (null for other backends).</summary>
public sealed record DiskStats(string Name, ulong SizeBytes, ulong? AllocatedBytes, CounterSnapshot Total);

/// <summary>One reactor: its CPU (null: unpinned), the seconds it spent in rounds that found work
/// (<see cref="Vhost.Reactor.Reactor.BusySeconds"/>) and how many queues it polls.</summary>
public sealed record ReactorStats(int Id, int? Cpu, double BusySeconds, int Queues);

/// <summary>
/// Statistics of the whole target at one moment (<see cref="TimeSeconds"/>: a monotonic clock, for rates between two
/// of them). Built by reading every counter set once; see <see cref="QueueCounters"/> for what is consistent.
/// </summary>
public sealed record TargetStats(double TimeSeconds, IReadOnlyList<ExportStats> Exports, IReadOnlyList<DiskStats> Disks, IReadOnlyList<ReactorStats> Reactors)
{
    /// <summary>Reads the target's counters. <paramref name="read"/> turns counters into a snapshot (raw, or since a
    /// reset); <paramref name="export"/> / <paramref name="disk"/> select one object (then the other list is empty).
    /// Errors: <see cref="ManagementException"/> NotFound for an unknown name.</summary>
    public static TargetStats Collect(TargetModel model, Func<QueueCounters, CounterSnapshot> read, string? export = null, string? disk = null)
    {
        var exports = model.Exports;
        var disks = model.Disks;
        if (export is not null && exports.All(e => e.Spec.Name != export)) throw new ManagementException(RpcErrorCode.NotFound, $"no export {export}");
        if (disk is not null && disks.All(d => d.Spec.Name != disk)) throw new ManagementException(RpcErrorCode.NotFound, $"no disk {disk}");
        int reactorCount = model.Reactors.Reactors.Count;
        var sources = exports.SelectMany(e => CounterSource.Of(e).Select(s => (Export: e, Source: s, Counts: read(s.Counters)))).ToList();
        // Timed right after the counters are read, before the summing below: rates divide by this.
        double seconds = Stopwatch.GetElapsedTime(0).TotalSeconds;

        var exportStats = export is null && disk is not null ? [] : exports.Where(e => export is null || e.Spec.Name == export).Select(e =>
        {
            var mine = sources.Where(s => s.Export == e).ToList();
            var queues = mine.GroupBy(s => s.Source.Queue).OrderBy(g => g.Key)
                .Select(g => new QueueStats(g.Key, (e.ReactorOffset + g.Key) % reactorCount, Sum(g.Select(s => s.Counts)))).ToList();
            return new ExportStats(e.Spec.Name, e.Spec.Kind, e.Spec.DiskNames.ToList(), queues, Sum(mine.Select(s => s.Counts))) { Source = e };
        }).ToList();
        var diskStats = disk is null && export is not null ? [] : disks.Where(d => disk is null || d.Spec.Name == disk).Select(d =>
            new DiskStats(d.Spec.Name, d.Backend.Info.SizeBytes, AllocatedBytes(d), Sum(sources.Where(s => s.Source.Disk == d.Spec.Name).Select(s => s.Counts))))
            .ToList();
        var reactors = model.Reactors.Reactors.Select(r => new ReactorStats(r.Id, r.Cpu, r.BusySeconds, r.QueueCount)).ToList();
        return new TargetStats(seconds, exportStats, diskStats, reactors);
    }

    private static CounterSnapshot Sum(IEnumerable<CounterSnapshot> parts)
    {
        var total = new CounterSnapshot();
        foreach (var p in parts) total.Add(p);
        return total;
    }

    private static ulong? AllocatedBytes(ManagedDisk disk) =>
        disk.Backend is ImageDisk image ? image.Image.AllocatedClusters * image.Image.ClusterSize : null;
}
