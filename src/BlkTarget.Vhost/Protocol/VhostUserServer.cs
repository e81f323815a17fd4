using System.Net.Sockets;
using BlkTarget.Vhost.Device;
using BlkTarget.Storage.Interop;
using BlkTarget.Vhost.Reactor;
using Microsoft.Extensions.Logging;

namespace BlkTarget.Vhost.Protocol;

/// <summary>
/// Listens on one Unix socket for one device and serves frontends one at a time, like qemu-storage-daemon:
/// when a frontend leaves, all its state is released and the next connection is accepted.
/// </summary>
public sealed class VhostUserServer : IDisposable
{
    private readonly IVhostUserDevice _device;
    private readonly ReactorPool _reactors;
    private readonly int _deviceOffset;
    private readonly ILogger _log;
    private readonly VhostUserSessionOptions _sessionOptions;
    private readonly Socket _listener;
    private readonly Thread _thread;
    private volatile VhostUserConnection? _current;
    private volatile VhostUserSession? _session;
    private volatile bool _stopping;
    private int _sessions;

    private VhostUserServer(string socketPath, IVhostUserDevice device, ReactorPool reactors, int deviceOffset, ILogger log,
        VhostUserSessionOptions sessionOptions, Socket listener)
    {
        SocketPath = socketPath;
        _sessionOptions = sessionOptions;
        _device = device;
        _reactors = reactors;
        _deviceOffset = deviceOffset;
        _log = log;
        _listener = listener;
        _thread = new Thread(AcceptLoop) { IsBackground = true, Name = $"vhost-user {device.Name}" };
    }

    public string SocketPath { get; }
    public int SessionsServed => Volatile.Read(ref _sessions);
    public bool HasFrontend => _current is not null;

    /// <summary>
    /// Binds the socket and starts accepting. A leftover socket file nobody listens on is replaced; a path
    /// where another process listens, or that is not a socket, is refused with <see cref="IOException"/>.
    /// <paramref name="sessionOptions"/> (default: the defaults) apply to every session; invalid ones throw
    /// <see cref="ArgumentOutOfRangeException"/>.
    /// </summary>
    public static VhostUserServer Start(string socketPath, IVhostUserDevice device, ReactorPool reactors, int deviceOffset, ILogger log,
        VhostUserSessionOptions? sessionOptions = null)
    {
        sessionOptions ??= new VhostUserSessionOptions();
        sessionOptions.Validate();
        UnixSocketPath.PrepareForBind(socketPath, "socket path");
        var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            listener.Bind(new UnixDomainSocketEndPoint(socketPath));
            listener.Listen(1);
        }
        catch (SocketException e)
        {
            listener.Dispose();
            throw new IOException($"cannot listen on {socketPath}: {e.Message}", e);
        }
        var server = new VhostUserServer(socketPath, device, reactors, deviceOffset, log, sessionOptions, listener);
        server._thread.Start();
        log.LogInformation("{Device}: listening on {Socket}", device.Name, socketPath);
        return server;
    }

    private void AcceptLoop()
    {
        while (!_stopping)
        {
            Socket client;
            try
            {
                client = _listener.Accept();
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                if (!_stopping) _log.LogError("{Device}: accept failed: {Error}", _device.Name, e.Message);
                return;
            }
            Serve(client);
        }
    }

    private void Serve(Socket client)
    {
        int number = Interlocked.Increment(ref _sessions);
        using var connection = new VhostUserConnection(client);
        _current = connection;
        _log.LogInformation("{Device}: frontend connected (session {Session})", _device.Name, number);
        _device.Connected(number);
        var session = new VhostUserSession(_device, connection, _reactors, _deviceOffset, _log, _sessionOptions);
        _session = session;
        try
        {
            if (!_stopping) session.Run();
            _log.LogInformation("{Device}: frontend disconnected (session {Session})", _device.Name, number);
        }
        catch (Exception e) when (e is VhostUserProtocolException or IOException or SocketException or ObjectDisposedException)
        {
            if (_stopping) _log.LogInformation("{Device}: session {Session} closed for shutdown", _device.Name, number);
            else _log.LogError("{Device}: session {Session} closed after error: {Error}", _device.Name, number, e.Message);
        }
        catch (Exception e)
        {
            // A bug of ours must cost this connection, never the process and its other devices.
            _log.LogError(e, "{Device}: session {Session} closed after internal error", _device.Name, number);
        }
        finally
        {
            _session = null;
            session.Dispose();
            _current = null;
        }
    }

    /// <summary>The connected frontend's session (<see cref="VhostUserSession.Status"/>), or null when none is connected.</summary>
    public SessionStatus? SessionStatus() => _session?.Status();

    /// <summary>Tells the connected frontend, if any, that the device's config space changed
    /// (<see cref="VhostUserSession.NotifyConfigChanged"/>). Any thread; false when no frontend heard it.</summary>
    public bool NotifyConfigChanged() => _session?.NotifyConfigChanged() ?? false;

    /// <summary>Stops accepting, ends the current session (its in-flight requests complete first), removes the
    /// socket file.</summary>
    public void Dispose()
    {
        if (_stopping) return;
        _stopping = true;
        _listener.Dispose();
        try { _current?.Socket.Shutdown(SocketShutdown.Both); }
        catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
        if (!_thread.Join(TimeSpan.FromSeconds(60))) _log.LogError("{Device}: session did not end in time", _device.Name);
        try { File.Delete(SocketPath); }
        catch (IOException) { }
        _log.LogInformation("{Device}: stopped listening on {Socket}", _device.Name, SocketPath);
    }
}
