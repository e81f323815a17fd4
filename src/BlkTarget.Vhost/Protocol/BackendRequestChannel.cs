using System.Net.Sockets;
using BlkTarget.Storage.Interop;

namespace BlkTarget.Vhost.Protocol;

/// <summary>
/// The backend request channel (vhost-user "back-end communication", protocol feature BACKEND_REQ): a socket the
/// frontend passes with SET_BACKEND_REQ_FD on which the backend sends requests of its own. We send
/// VHOST_USER_BACKEND_CONFIG_CHANGE_MSG without NEED_REPLY, so nothing is ever read back and a frontend that is
/// slow to answer can never hold up the caller. Thread-safe: the session installs and closes it, management
/// threads send on it.
/// </summary>
public sealed class BackendRequestChannel : IDisposable
{
    private readonly object _gate = new();
    private VhostUserConnection? _connection;

    /// <summary>Installs the socket the frontend sent (ownership passes here), closing any previous one.</summary>
    public void Replace(OwnedFd? fd)
    {
        VhostUserConnection? next = fd is null ? null : new VhostUserConnection(UnixSocketFds.Adopt(fd));
        VhostUserConnection? old;
        lock (_gate)
        {
            old = _connection;
            _connection = next;
        }
        old?.Dispose();
    }

    public bool IsOpen
    {
        get { lock (_gate) return _connection is not null; }
    }

    /// <summary>Sends CONFIG_CHANGE_MSG. False when there is no channel or the frontend closed it.</summary>
    public bool SendConfigChange()
    {
        lock (_gate)
        {
            if (_connection is null) return false;
            try
            {
                _connection.Send(VhostUserBackendRequest.ConfigChangeMsg, 0, []);
                return true;
            }
            catch (Exception e) when (e is SocketException or IOException or ObjectDisposedException)
            {
                return false;
            }
        }
    }

    public void Dispose() => Replace(null);
}
