namespace BlkTarget.Storage.Nbd;

/// <summary>Where an nbd disk lives and how it is opened: <c>nbd:URI</c>, the URI as libnbd's nbd_connect_uri takes it
/// (<c>nbd+unix:///EXPORT?socket=PATH</c>, <c>nbd://HOST[:PORT]/EXPORT</c>).</summary>
public sealed record NbdDiskOptions
{
    public required string Uri { get; init; }
    public bool ReadOnly { get; init; }
    /// <summary>Logical block size in bytes, 512 or 4096; the server's minimum block size must not be larger.</summary>
    public uint BlockSize { get; init; } = 512;
    /// <summary>Connections to open when the server allows multi-conn (0: one per CPU, at most 4). Ignored otherwise:
    /// without multi-conn a flush on one connection need not cover writes made on another, so there is one.</summary>
    public int Connections { get; init; }
}
