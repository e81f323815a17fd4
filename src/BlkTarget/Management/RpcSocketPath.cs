using BlkTarget.Vhost.Protocol;

namespace BlkTarget.Management;

/// <summary>Where the management socket lives, and getting its path ready for binding.</summary>
public static class RpcSocketPath
{
    /// <summary>/run/blktarget/rpc.sock as root; else $XDG_RUNTIME_DIR/blktarget/rpc.sock, or
    /// /tmp/blktarget-UID/rpc.sock without XDG_RUNTIME_DIR.</summary>
    public static string Default()
    {
        if (Environment.IsPrivilegedProcess) return "/run/blktarget/rpc.sock";
        string? runtime = Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR");
        if (!string.IsNullOrEmpty(runtime)) return Path.Combine(runtime, "blktarget", "rpc.sock");
        return $"/tmp/blktarget-{Environment.UserName}/rpc.sock";
    }

    /// <summary>Creates the socket's directory (mode 0700 when it is new) and removes a stale socket file there.
    /// Throws <see cref="IOException"/> if another process listens there or the path is not a socket.</summary>
    public static void Prepare(string path)
    {
        string directory = Path.GetDirectoryName(Path.GetFullPath(path))!;
        if (!Directory.Exists(directory) && !OperatingSystem.IsWindows())
            Directory.CreateDirectory(directory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        UnixSocketPath.PrepareForBind(path, "rpc socket");
    }
}
