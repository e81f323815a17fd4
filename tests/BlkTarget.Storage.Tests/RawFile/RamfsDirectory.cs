namespace BlkTarget.Storage.Tests.RawFile;

/// <summary>
/// A fresh ramfs mounted on a temporary directory, unmounted and removed on dispose. ramfs has no fallocate at all, so
/// a loop device over one of its files can neither discard nor write zeroes itself (both sysfs limits read 0): the
/// block device every capable one has to be told apart from. Needs root; fails (never skips) without it.
/// </summary>
internal sealed class RamfsDirectory : IDisposable
{
    public RamfsDirectory()
    {
        Path = Directory.CreateDirectory(System.IO.Path.Combine("/var/tmp", $"blkt-ramfs-{Guid.NewGuid():N}")).FullName;
        try
        {
            LoopDevice.Run("mount", "-t", "ramfs", "ramfs", Path);
        }
        catch
        {
            Directory.Delete(Path);
            throw;
        }
    }

    public string Path { get; }

    public void Dispose()
    {
        try
        {
            LoopDevice.Run("umount", Path);
        }
        finally
        {
            Directory.Delete(Path);
        }
    }
}
