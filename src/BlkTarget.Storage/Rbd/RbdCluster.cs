using BlkTarget.Storage.Interop;

namespace BlkTarget.Storage.Rbd;

/// <summary>
/// One librados connection shared by every rbd disk of a cluster in this process: a librados client costs ~16 threads
/// and ~70 MiB, so disks with the same (conf, user, cache mode) share one, opened by the first disk and shut down with
/// the last (reference counted). The cache mode is part of the key because librbd 16's C API sets rbd_cache per
/// connection (<c>rados_conf_set</c> before <c>rados_connect</c>).
/// </summary>
public sealed class RbdCluster
{
    private static readonly Dictionary<(string Conf, string User, bool Writeback), RbdCluster> Open = [];
    private static readonly object Gate = new();

    private readonly (string Conf, string User, bool Writeback) _key;
    private int _references;

    private RbdCluster((string, string, bool) key, RadosHandle handle)
    {
        _key = key;
        Handle = handle;
    }

    /// <summary>The connected cluster; disposed with the last <see cref="Release"/> (pool contexts made from it hold a
    /// reference on it, so it is shut down after them).</summary>
    public RadosHandle Handle { get; }

    /// <summary>Connections open now (for tests: sharing and release).</summary>
    public static int OpenCount { get { lock (Gate) return Open.Count; } }

    /// <summary>
    /// The connection for these options, connecting on first use (blocks up to librados' client_mount_timeout, set to
    /// 30 s unless the conf file says otherwise). Pair every call with <see cref="Release"/>.
    /// </summary>
    /// <exception cref="IOException">the conf cannot be read, or the cluster cannot be reached or refuses the user.</exception>
    public static RbdCluster Acquire(RbdDiskOptions options)
    {
        var key = (options.ConfPath ?? "", options.User ?? "", options.Writeback);
        lock (Gate)
        {
            if (!Open.TryGetValue(key, out var cluster))
            {
                cluster = new RbdCluster(key, Connect(options));
                Open.Add(key, cluster);
            }
            cluster._references++;
            return cluster;
        }
    }

    /// <summary>Drops one reference; the last one shuts the connection down.</summary>
    public void Release()
    {
        lock (Gate)
        {
            if (--_references > 0) return;
            Open.Remove(_key);
        }
        Handle.Dispose();
    }

    private static RadosHandle Connect(RbdDiskOptions options)
    {
        int r = RbdNative.rados_create(out nint raw, options.User);
        if (r < 0) throw new IOException(RbdNative.Describe("rados_create", r), -r);
        var handle = new RadosHandle(raw);
        try
        {
            string where = options.ConfPath ?? "the default ceph.conf";
            Check(RbdNative.rados_conf_set(raw, "client_mount_timeout", "30"), "setting client_mount_timeout");
            Check(RbdNative.rados_conf_read_file(raw, options.ConfPath), $"reading {where}");
            Check(RbdNative.rados_conf_set(raw, "rbd_cache", options.Writeback ? "true" : "false"), "setting rbd_cache");
            Check(RbdNative.rados_connect(raw), $"connecting to the cluster of {where} as client.{options.User ?? "admin"}");
            return handle;
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    private static void Check(int result, string what)
    {
        if (result < 0) throw new IOException(RbdNative.Describe(what, result), -result);
    }
}
