using BlkTarget.Storage.Image;
using BlkTarget.Storage.RawFile;
using BlkTarget.Storage.Ram;
using BlkTarget.Storage.Rbd;
using BlkTarget.Tests.Ceph;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlkTarget.Storage.Tests.Conformance;

/// <summary>Every backend the conformance suite runs against, created fresh for each test.</summary>
public sealed class BackendFactory : IDisposable
{
    public const ulong Size = 8 << 20;
    private readonly string _dir = Directory.CreateDirectory(Path.Combine("/var/tmp", $"blkt-conf-{Guid.NewGuid():N}")).FullName;

    public static TheoryData<string> Kinds => ["ram", "file-direct", "file-writeback", "image-direct", "image-4k-clusters", "image-writeback", "rbd", "rbd-writeback"];

    /// <summary>Whether DISCARD leaves the range reading as zeros on this backend; on the others it is only a hint
    /// (rbd: librbd keeps data of discards smaller than its granularity) and the range's contents become unknown.</summary>
    public static bool DiscardZeroes(string kind) => !kind.StartsWith("rbd", StringComparison.Ordinal);

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
            default:
                throw new ArgumentException(kind);
        }
    }

    public string Folder => _dir;

    public void Dispose() => System.IO.Directory.Delete(_dir, recursive: true);
}
