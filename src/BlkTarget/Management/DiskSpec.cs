using BlkTarget.Configuration;

namespace BlkTarget.Management;

/// <summary>
/// A named disk (SPDK's bdev): one backend instance, from the same spec strings `serve --backend` takes.
/// </summary>
public sealed record DiskSpec
{
    /// <summary>Unique name: 1-64 characters of letters, digits, '.', '_', '-'.</summary>
    public required string Name { get; init; }
    public required BackendSpec Backend { get; init; }
    /// <summary>file:/image: only: create the file with this many bytes first (an existing path is refused).</summary>
    public ulong? CreateSize { get; init; }
    /// <summary>Logical block size in bytes the guest sees: 512 or 4096.</summary>
    public uint BlockSize { get; init; } = 512;
    /// <summary>Opened read-only; every export of it is read-only, and any number of exports may use it.</summary>
    public bool ReadOnly { get; init; }
    /// <summary>May be attached writable to several exports at once (live migration on one host).</summary>
    public bool Shared { get; init; }
    /// <summary>IOPS and bandwidth limits shared by every export of the disk (qos_set changes them at run time).</summary>
    public Vhost.Qos.QosLimits Qos { get; init; } = Vhost.Qos.QosLimits.None;
}
