using static BlkTarget.Storage.Interop.FileNative;

namespace BlkTarget.Storage.Image;

/// <summary>`blktarget image info`: what an image is and what it occupies. Read-only.</summary>
public sealed record ImageInfo(string Path, ImageHeader Header, ulong AllocatedClusters, ulong FileSize, ulong DiskUsage)
{
    public ulong AllocatedBytes => AllocatedClusters * Header.ClusterSize;

    public static ImageInfo Read(string path)
    {
        using var image = ImageFile.Open(path, readOnly: true, directIo: false);
        var stat = StatFd(image.Fd) ?? throw new IOException($"{path}: statx failed: {LastError()}");
        return new ImageInfo(path, image.Header, image.AllocatedClusters, stat.Size, stat.AllocatedBytes);
    }
}
