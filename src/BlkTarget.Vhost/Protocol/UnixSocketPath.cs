using System.Net.Sockets;
using BlkTarget.Storage.Interop;

namespace BlkTarget.Vhost.Protocol;

/// <summary>
/// Getting a Unix socket path ready for bind(2), for every listener of the target (vhost-user devices, the
/// management socket): a socket file left behind by a process that died is removed; a path where a process still
/// listens, or that is not a socket, is refused.
/// </summary>
public static class UnixSocketPath
{
    /// <summary>True when a process accepts connections on <paramref name="path"/>.</summary>
    public static bool IsListening(string path)
    {
        if (!File.Exists(path) || !FileType.IsSocket(path)) return false;
        using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            probe.Connect(new UnixDomainSocketEndPoint(path));
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    /// <summary>Removes a stale socket file at <paramref name="path"/>.</summary>
    /// <exception cref="IOException">"<paramref name="label"/> PATH exists and is not a socket", or "... is in use by
    /// another process".</exception>
    public static void PrepareForBind(string path, string label)
    {
        if (!File.Exists(path) && !Directory.Exists(path)) return;
        if (!FileType.IsSocket(path)) throw new IOException($"{label} {path} exists and is not a socket");
        if (IsListening(path)) throw new IOException($"{label} {path} is in use by another process");
        File.Delete(path);   // stale: left behind by a process that died
    }
}
