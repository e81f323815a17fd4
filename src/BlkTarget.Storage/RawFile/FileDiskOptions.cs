namespace BlkTarget.Storage.RawFile;

/// <summary>How a raw file or block device is opened for export.</summary>
public sealed record FileDiskOptions
{
    public required string Path { get; init; }
    /// <summary>O_DIRECT (cache=none, the default): no host page cache, data goes straight from guest memory
    /// to the device. False is cache=writeback: buffered I/O, FLUSH makes it durable.</summary>
    public bool DirectIo { get; init; } = true;
    public bool ReadOnly { get; init; }
    public uint BlockSize { get; init; } = 512;
    /// <summary>Create a new sparse file of this size (refused if the path exists).</summary>
    public ulong? CreateSize { get; init; }
}
