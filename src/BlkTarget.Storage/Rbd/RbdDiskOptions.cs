namespace BlkTarget.Storage.Rbd;

/// <summary>Where an rbd disk lives and how it is opened: <c>rbd:POOL/IMAGE[,conf=PATH][,id=USER][,cache=none|writeback]</c>.</summary>
public sealed record RbdDiskOptions
{
    /// <summary>The pool the image is in.</summary>
    public required string Pool { get; init; }
    /// <summary>The image's name in the pool.</summary>
    public required string Image { get; init; }
    /// <summary>ceph.conf to read; null: librados' defaults ($CEPH_CONF, /etc/ceph/ceph.conf, ...).</summary>
    public string? ConfPath { get; init; }
    /// <summary>The cephx user without "client." (e.g. "admin"); null: librados' default (admin).</summary>
    public string? User { get; init; }
    /// <summary>True (cache=writeback): librbd's cache is on and the guest sees a volatile write cache whose FLUSH
    /// reaches rbd_aio_flush. False (cache=none, the default): rbd_cache=false, every write is on the OSDs when it
    /// completes.</summary>
    public bool Writeback { get; init; }
    public bool ReadOnly { get; init; }
    /// <summary>Logical block size in bytes, 512 or 4096.</summary>
    public uint BlockSize { get; init; } = 512;

    /// <summary>POOL/IMAGE, for logs and errors.</summary>
    public string Name => $"{Pool}/{Image}";
}
