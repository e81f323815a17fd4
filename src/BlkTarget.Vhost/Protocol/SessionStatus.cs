namespace BlkTarget.Vhost.Protocol;

/// <summary>One virtqueue of a connected frontend: its size (0: not set up), whether it runs and on which reactor,
/// requests in flight, and why it stopped processing (null while healthy).</summary>
public sealed record QueueStatus(int Index, uint Size, bool Running, bool Enabled, int? Reactor, int InFlight, string? Broken);

/// <summary>What a connected frontend negotiated (virtio feature bits, vhost-user protocol features), whether it gave
/// a backend request channel, and its queues.</summary>
public sealed record SessionStatus(ulong AckedFeatures, ProtocolFeatures AckedProtocolFeatures, bool BackendChannel, IReadOnlyList<QueueStatus> Queues);
