using BlkTarget.Storage.Image;
using BlkTarget.Storage.Interop;

namespace BlkTarget.Storage.Tests.Image;

/// <summary>Scratch files for the image tooling tests: images and raw files with known contents, and raw byte
/// surgery on them (the tools must cope with whatever is on disk).</summary>
public sealed class ImageTestFiles : IDisposable
{
    private readonly string _dir = Directory.CreateDirectory(Path.Combine("/var/tmp", $"blkt-tools-{Guid.NewGuid():N}")).FullName;

    public string PathFor(string name) => Path.Combine(_dir, name);

    /// <summary>Deterministic non-zero-ish bytes (a few zero bytes inside are fine).</summary>
    public static byte[] Pattern(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        data[0] = (byte)(seed | 1);
        return data;
    }

    /// <summary>A raw disk of <paramref name="size"/> bytes with data at the given offsets, holes elsewhere.</summary>
    public string Raw(string name, ulong size, params (ulong Offset, byte[] Data)[] extents)
    {
        string path = PathFor(name);
        using var file = new FileStream(path, FileMode.CreateNew, FileAccess.Write);
        file.SetLength((long)size);
        foreach (var (offset, data) in extents)
        {
            file.Position = (long)offset;
            file.Write(data);
        }
        return path;
    }

    /// <summary>An image with data written at the given offsets, built the way convert builds one.</summary>
    public string Image(string name, ulong size, uint clusterSize, params (ulong Offset, byte[] Data)[] extents)
    {
        string path = PathFor(name);
        using var sink = ImageSink.Create(path, size, clusterSize);
        foreach (var (offset, data) in extents.OrderBy(e => e.Offset)) DiskCopy.WriteNonZero(sink, offset, data);
        sink.Complete();
        return path;
    }

    /// <summary>The whole virtual disk as bytes (image or raw).</summary>
    public static byte[] Contents(string path)
    {
        using var source = DiskSource.Open(path);
        var all = new byte[source.Size];
        source.Read(0, all);
        return all;
    }

    public static ImageHeader HeaderOf(string path)
    {
        var bytes = new byte[ImageHeader.Length];
        using (var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite)) file.ReadExactly(bytes);
        return ImageHeader.Read(bytes, (ulong)new FileInfo(path).Length);
    }

    public static ulong ReadEntry(string path, ulong virtualCluster)
    {
        var bytes = new byte[8];
        using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        file.Position = (long)(HeaderOf(path).MapOffset + virtualCluster * 8);
        file.ReadExactly(bytes);
        return BitConverter.ToUInt64(bytes);
    }

    /// <summary>Overwrites one map entry on disk, behind the image code's back.</summary>
    public static void WriteEntry(string path, ulong virtualCluster, ulong physical)
    {
        ulong mapOffset = HeaderOf(path).MapOffset;
        using var file = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
        file.Position = (long)(mapOffset + virtualCluster * 8);
        file.Write(BitConverter.GetBytes(physical));
    }

    public static void WriteBytes(string path, long offset, ReadOnlySpan<byte> bytes)
    {
        using var file = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
        file.Position = offset;
        file.Write(bytes);
    }

    /// <summary>The file's bytes, read without the advisory lock .NET takes for its FileShare emulation. An image's
    /// own exclusive flock lives as long as its open file description, and a process another test forks at that
    /// moment holds a copy of it until it execs: File.ReadAllBytes then failed once in CI with "used by another
    /// process" right after the image was closed.</summary>
    public static unsafe byte[] RawBytes(string path)
    {
        using var fd = OwnedFd.FromResult(FileNative.open(path, FileNative.O_RDONLY | FileNative.O_CLOEXEC, 0), $"open {path}");
        var bytes = new byte[new FileInfo(path).Length];
        fixed (byte* start = bytes)
        {
            long at = 0;
            while (at < bytes.Length)
            {
                nint n = FileNative.pread(fd.Fd, start + at, (nuint)(bytes.Length - at), at);
                if (n < 0) throw Errno.Exception($"reading {path}");
                if (n == 0) throw new IOException($"{path} ended at byte {at} of {bytes.Length}");
                at += n;
            }
        }
        return bytes;
    }

    /// <summary>Bytes the file occupies on disk.</summary>
    public static ulong DiskUsage(string path)
    {
        using var fd = new OwnedFd(FileNative.open(path, FileNative.O_RDONLY | FileNative.O_CLOEXEC, 0));
        return FileNative.StatFd(fd.Fd)!.Value.AllocatedBytes;
    }

    /// <summary>Whether [offset, offset+length) of the file is entirely a hole.</summary>
    public static bool IsHole(string path, long offset, long length)
    {
        using var fd = new OwnedFd(FileNative.open(path, FileNative.O_RDONLY | FileNative.O_CLOEXEC, 0));
        long data = FileNative.lseek(fd.Fd, offset, FileNative.SEEK_DATA);
        return data < 0 || data >= offset + length;
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);
}
