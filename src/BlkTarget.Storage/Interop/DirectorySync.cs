namespace BlkTarget.Storage.Interop;

/// <summary>fsync of a directory: makes a rename inside it durable (the last step of an atomic file replace).</summary>
public static class DirectorySync
{
    private const int O_DIRECTORY = 0x10000;

    /// <summary>Opens <paramref name="directory"/> read-only and fsyncs it; throws <see cref="IOException"/> (HResult = errno).</summary>
    public static void Fsync(string directory)
    {
        using var fd = OwnedFd.FromResult(FileNative.open(directory, FileNative.O_RDONLY | O_DIRECTORY | FileNative.O_CLOEXEC, 0), $"open {directory}");
        if (FileNative.fsync(fd.Fd) != 0) throw Errno.Exception($"fsync {directory}");
    }
}
