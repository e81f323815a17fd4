namespace BlkTarget.Storage.Interop;

/// <summary>chown(2) for what .NET has no API for: changing a path's group.</summary>
public static class FileOwner
{
    /// <summary>Gives <paramref name="path"/> to group <paramref name="gid"/>, keeping its owner. Throws
    /// <see cref="IOException"/> (errno in the message) when refused.</summary>
    public static void ChangeGroup(string path, int gid)
    {
        if (FileNative.chown(path, -1, gid) != 0) throw new IOException($"cannot give {path} to group {gid}: {FileNative.LastError()}");
    }
}
