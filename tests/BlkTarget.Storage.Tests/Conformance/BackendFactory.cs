using BlkTarget.Storage.Image;
using BlkTarget.Storage.Nbd;
using BlkTarget.Storage.RawFile;
using BlkTarget.Storage.Ram;
using BlkTarget.Storage.Rbd;
using BlkTarget.Tests.Ceph;
using BlkTarget.Tests.Nbd;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlkTarget.Storage.Tests.Conformance;

/// <summary>Every backend the conformance suite runs against, created fresh for each test.</summary>
public sealed class BackendFactory : IDisposable
{
    public const ulong Size = 8 << 20;
    private readonly string _dir = Directory.CreateDirectory(Path.Combine("/var/tmp", $"blkt-conf-{Guid.NewGuid():N}")).FullName;

    public static TheoryData<string> Kinds => ["ram", "file-direct", "file-writeback", "image-direct", "image-4k-clusters", "image-writeback", "rbd", "rbd-writeback", "nbd", "nbd-multiconn", "nbdkit"];

    /// <summary>Whether DISCARD leaves the range reading as zeros on this backend; on the others it is only a hint
    /// (rbd: librbd keeps data of discards smaller than its granularity) and the range's contents become unknown.</summary>
    /// nbd: TRIM is a hint in the protocol.
    public static bool DiscardZeroes(string kind) => !kind.StartsWith("rbd", StringComparison.Ordinal) && !kind.StartsWith("nbd", StringComparison.Ordinal);

    private readonly List<NbdTestServer> _nbdServers = [];

    public IBlockDevice Create(string kind, uint blockSize = 512, bool readOnly = false)
    {
        switch (kind)
        {
            case "ram":
                return new RamDisk(Size, blockSize, readOnly);
            case "file-direct":
            case "file-writeback":
                string path = Path.Combine(_dir, $"{kind}-{Guid.NewGuid():N}.img");
                if (readOnly)
                {
                    FileDisk.Open(new FileDiskOptions { Path = path, CreateSize = Size, BlockSize = blockSize }, NullLogger.Instance).Dispose();
                }
                return FileDisk.Open(new FileDiskOptions
                {
                    Path = path,
                    DirectIo = kind == "file-direct",
                    ReadOnly = readOnly,
                    BlockSize = blockSize,
                    CreateSize = readOnly ? null : Size,
                }, NullLogger.Instance);
            case "image-direct":
            case "image-4k-clusters":
            case "image-writeback":
                string imagePath = Path.Combine(_dir, $"{kind}-{Guid.NewGuid():N}.bti");
                ImageFile.Create(imagePath, Size, kind == "image-4k-clusters" ? 4096u : 65536u);
                return ImageDisk.Open(imagePath, readOnly, blockSize, directIo: kind != "image-writeback", NullLogger.Instance);
            case "rbd":
            case "rbd-writeback":
                string image = CephTestCluster.CreateImage((int)(Size >> 20), "conf");
                return RbdDisk.Open(new RbdDiskOptions
                {
                    Pool = "rbd", Image = image, ConfPath = CephTestCluster.ConfPath, Writeback = kind == "rbd-writeback",
                    ReadOnly = readOnly, BlockSize = blockSize,
                }, NullLogger.Instance);
            case "nbd":
            case "nbd-multiconn":
            case "nbdkit":
                // qemu-nbd with --shared=1 does not allow multi-conn (one connection shared by every channel); with
                // --shared=4 it does, and so does nbdkit's memory plugin (a connection per channel): both of the
                // backend's connection models, and two server implementations, run the suite.
                var server = kind == "nbdkit"
                    ? NbdTestServer.Start(NbdTestServer.Kind.NbdkitMemory, Size)
                    : NbdTestServer.Start(NbdTestServer.Kind.QemuNbd, Size, shared: kind == "nbd" ? 1 : 4);
                _nbdServers.Add(server);
                var disk = NbdDisk.Open(new NbdDiskOptions { Uri = server.Uri, ReadOnly = readOnly, BlockSize = blockSize }, NullLogger.Instance);
                if (disk.MultiConn != (kind != "nbd"))
                {
                    disk.Dispose();
                    throw new InvalidOperationException($"{kind}: the server {(disk.MultiConn ? "allows" : "does not allow")} multi-conn, not what this kind tests");
                }
                return disk;
            default:
                throw new ArgumentException(kind);
        }
    }

    public string Folder => _dir;

    public void Dispose()
    {
        foreach (var server in _nbdServers) server.Dispose();
        System.IO.Directory.Delete(_dir, recursive: true);
    }
}
