namespace BlkTarget.Vhost.Stats;

/// <summary>Creates the counters of a device's queues (one <see cref="QueueCounters"/> per queue index).</summary>
public static class QueueCounterSet
{
    /// <summary><paramref name="queues"/> fresh counters (at least one).</summary>
    public static QueueCounters[] Create(int queues)
    {
        var set = new QueueCounters[Math.Max(1, queues)];
        for (int i = 0; i < set.Length; i++) set[i] = new QueueCounters();
        return set;
    }
}
