using BlkTarget.Configuration;
using BlkTarget.Storage.Interop;

namespace BlkTarget.Management;

/// <summary>
/// Gives an export's freshly bound socket the configured group and mode, so a QEMU running as another user (e.g.
/// libvirt's qemu user in group kvm) can connect. Connecting to a Unix socket needs write permission on it.
/// </summary>
public static class SocketPermissions
{
    /// <summary>Applies <paramref name="access"/> to <paramref name="path"/>. Throws <see cref="IOException"/> with one
    /// line (unknown group, chown/chmod refused).</summary>
    public static void Apply(string path, SocketAccess? access)
    {
        if (access is null) return;
        if (access.Group is { } group)
        {
            FileOwner.ChangeGroup(path, ResolveGroup(group));
        }
        if (access.Mode is { } mode && !OperatingSystem.IsWindows()) File.SetUnixFileMode(path, mode);
    }

    /// <summary>A group name from /etc/group, or a numeric gid.</summary>
    public static int ResolveGroup(string group)
    {
        if (int.TryParse(group, out int gid) && gid >= 0) return gid;
        foreach (var line in File.ReadLines("/etc/group"))
        {
            var fields = line.Split(':');
            if (fields.Length >= 3 && fields[0] == group && int.TryParse(fields[2], out gid)) return gid;
        }
        throw new IOException($"no group '{group}' in /etc/group");
    }
}
