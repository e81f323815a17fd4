using BlkTarget.Storage.Interop;
using Microsoft.Extensions.Logging;
using static BlkTarget.Storage.Interop.NbdNative;

namespace BlkTarget.Storage.Nbd;

/// <summary>
/// One NBD connection as the channels see it: the current <see cref="NbdConnection"/> (replaced when it died and a
/// request asked for a reconnect), the poller its socket sits in, and which channel drives it.
/// <para>
/// Driving: libnbd lets any thread issue commands on a handle (it serialises them with its lock), but the socket has
/// to be watched and fed (<c>nbd_aio_notify_read/write</c>) by one thread. The first channel to poll claims the link
/// (an interlocked claim, never a wait) and puts the link's poller, an epoll fd holding the socket, into its reactor's
/// sleep set; a channel on another reactor only issues and then wakes the driver. The socket is not put into the
/// reactor's set directly because the reactor reads 8 bytes from every wake source it woke on (they are eventfds);
/// an epoll fd is readable while a socket in it is ready and ignores that read.
/// </para>
/// <para>
/// The socket is only watched while commands are in flight, for the direction libnbd waits on (nbd_aio_get_direction):
/// an idle connection whose server went away would otherwise wake the reactor for ever. Such a loss is found by the
/// next command (the send or the reply fails, libnbd completes it with an error and turns DEAD).
/// </para>
/// <para>
/// Reconnecting: a request that finds the connection dead fails with IOERR and asks for a reconnect, at most one a
/// second per link. It runs on a thread-pool thread (nbd_connect_uri blocks); the new connection is published for the
/// next requests and the dead one is closed once libnbd gave back all it held.
/// </para>
/// </summary>
internal sealed class NbdLink : IDisposable
{
    private const long ReconnectIntervalMs = 1000;
    private const int NoDriver = -1;

    private readonly string _uri;
    private readonly ulong _size;
    private readonly bool _needsWrite;
    private readonly ILogger _log;
    private readonly OwnedFd _poller = Epoll.Create();
    private volatile NbdConnection? _current;
    private NbdConnection? _watched;
    private int _driver = NoDriver;
    private volatile IoContext? _driverIo;
    private int _reconnecting;
    private long _nextAttempt;
    private volatile bool _disposed;
    private volatile NbdChannel[] _channels = [];
    private long _reconnects;
    private int _failedAttempts;

    public NbdLink(NbdConnection connection, string uri, bool needsWrite, ILogger log)
    {
        _current = connection;
        _uri = uri;
        _size = connection.Size;
        _needsWrite = needsWrite;
        _log = log;
    }

    public NbdConnection? Current => _current;

    /// <summary>Channels using this link (the disk balances new channels over its links with it).</summary>
    public int ChannelCount => _channels.Length;

    /// <summary>Successful reconnects so far (tests).</summary>
    public long Reconnects => Interlocked.Read(ref _reconnects);

    public void Attach(NbdChannel channel)
    {
        lock (_poller)
        {
            var next = new NbdChannel[_channels.Length + 1];
            _channels.CopyTo(next, 0);
            next[^1] = channel;
            _channels = next;
        }
    }

    /// <summary>Takes a channel off the link, after its last command came back; a driver hands the socket over to
    /// the remaining channels (woken, the first to poll claims it).</summary>
    public void Detach(NbdChannel channel, IoContext io)
    {
        if (Volatile.Read(ref _driver) == channel.Id)
        {
            io.RemoveWakeSource(_poller.Fd);
            _driverIo = null;
            Volatile.Write(ref _driver, NoDriver);
        }
        NbdChannel[] rest;
        lock (_poller)
        {
            rest = Array.FindAll(_channels, c => c != channel);
            _channels = rest;
            // A link closed under its channels kept its poller for them (see Close): the last one out closes it.
            if (_disposed && rest.Length == 0) _poller.Dispose();
        }
        foreach (var other in rest) other.WakeReactor();
    }

    public bool IsDriver(NbdChannel channel) => Volatile.Read(ref _driver) == channel.Id;

    /// <summary>Wakes the driving reactor after another reactor issued a command: it may sleep with the socket out of
    /// its poller (nothing was in flight) or watching only for replies while libnbd now waits to send.</summary>
    public void WakeDriver() => _driverIo?.Wake();

    /// <summary>
    /// One polling round of <paramref name="channel"/> (its reactor thread): claims the link when nobody drives it,
    /// and when this channel drives it, feeds the socket's readiness to libnbd (completion callbacks run from here) and
    /// watches the socket for what libnbd waits on. Returns how much happened.
    /// </summary>
    public unsafe int Drive(NbdChannel channel, IoContext io)
    {
        int driver = Volatile.Read(ref _driver);
        if (driver != channel.Id)
        {
            if (driver != NoDriver || _disposed || Interlocked.CompareExchange(ref _driver, channel.Id, NoDriver) != NoDriver) return 0;
            io.AddWakeSource(_poller.Fd);
            _driverIo = io;
        }
        var conn = _current;
        if (_watched is { } previous && previous != conn) Unwatch(previous);
        if (conn is null) return 0;
        nint h = conn.Handle.TryEnter();
        if (h == 0) return 0;
        try
        {
            if (conn.Dead || Volatile.Read(ref conn.InFlight) == 0)
            {
                Unwatch(conn);
                return 0;
            }
            uint direction = nbd_aio_get_direction(h);
            Watch(conn, direction);
            Epoll.Event* events = stackalloc Epoll.Event[2];
            int n = Epoll.Wait(_poller, new Span<Epoll.Event>(events, 2), 0);
            int work = 0;
            for (int i = 0; i < n; i++)
            {
                if (events[i].Data != (ulong)conn.SocketFd) continue;
                uint ready = events[i].Events;
                bool failed = (ready & (Epoll.EPOLLHUP | Epoll.EPOLLERR)) != 0;
                if ((ready & Epoll.EPOLLIN) != 0 || (failed && (direction & AIO_DIRECTION_READ) != 0)) nbd_aio_notify_read(h);
                else if ((ready & Epoll.EPOLLOUT) != 0 || failed) nbd_aio_notify_write(h);
                work++;
            }
            if (work == 0) return 0;
            if (nbd_aio_is_dead(h) != 0 || nbd_aio_is_closed(h) != 0) MarkDead(conn, NbdNative.LastError);
            if (conn.Dead) Unwatch(conn);
            else Watch(conn, nbd_aio_get_direction(h));
            return work;
        }
        finally
        {
            conn.Handle.Exit();
        }
    }

    private void Watch(NbdConnection conn, uint direction)
    {
        uint events = ((direction & AIO_DIRECTION_READ) != 0 ? Epoll.EPOLLIN : 0) | ((direction & AIO_DIRECTION_WRITE) != 0 ? Epoll.EPOLLOUT : 0);
        if (events == conn.Watched) return;
        if (events == 0)
        {
            Unwatch(conn);
            return;
        }
        if (conn.Watched == 0) Epoll.Add(_poller, conn.SocketFd, (ulong)conn.SocketFd, events);
        else Epoll.Modify(_poller, conn.SocketFd, (ulong)conn.SocketFd, events);
        conn.Watched = events;
        _watched = conn;
    }

    private void Unwatch(NbdConnection conn)
    {
        // Only while the handle (and so the socket) is open: a closed socket has left the poller by itself, and its
        // number may already belong to another file.
        if (conn.Watched != 0 && !conn.Handle.IsClosed) Epoll.Remove(_poller, conn.SocketFd);
        conn.Watched = 0;
        if (_watched == conn) _watched = null;
    }

    /// <summary>The connection failed: record it and say so once.</summary>
    public void MarkDead(NbdConnection conn, string reason)
    {
        if (conn.Dead) return;
        conn.MarkDead();
        _log.LogError("nbd {Uri}: connection lost ({Reason}); requests fail until it is back, reconnecting on the next request",
            _uri, reason);
    }

    /// <summary>A request found <paramref name="seen"/> dead (or no connection): start one reconnect unless one runs
    /// or the last attempt was less than a second ago. Any thread; never blocks.</summary>
    public void RequestReconnect(NbdConnection? seen)
    {
        if (_disposed || _current != seen) return;
        long now = Environment.TickCount64;
        if (now < Interlocked.Read(ref _nextAttempt)) return;
        if (Interlocked.CompareExchange(ref _reconnecting, 1, 0) != 0) return;
        Interlocked.Exchange(ref _nextAttempt, now + ReconnectIntervalMs);
        ThreadPool.UnsafeQueueUserWorkItem(static link => link.Reconnect(), this, preferLocal: false);
    }

    private void Reconnect()
    {
        try
        {
            NbdConnection fresh;
            try
            {
                fresh = NbdConnection.Connect(_uri);
            }
            catch (IOException e)
            {
                // One attempt a second while requests keep coming: the first ones, then one a minute.
                int failed = ++_failedAttempts;
                if (failed <= 3 || failed % 60 == 0)
                    _log.LogWarning("nbd {Uri}: reconnecting failed: {Error} (attempt {Attempt})", _uri, e.Message, failed);
                return;
            }
            if (fresh.Size < _size || (_needsWrite && fresh.ReadOnly))
            {
                _log.LogError("nbd {Uri}: the export came back with {Size} bytes{ReadOnly}; not using it", _uri, fresh.Size,
                    fresh.ReadOnly ? ", read-only" : "");
                fresh.Dispose();
                return;
            }
            var old = _current;
            lock (_poller)
            {
                if (_disposed)
                {
                    fresh.Dispose();
                    return;
                }
                _current = fresh;
            }
            Interlocked.Increment(ref _reconnects);
            _log.LogInformation("nbd {Uri}: reconnected after {Attempts} failed attempt(s)", _uri, _failedAttempts);
            _failedAttempts = 0;
            if (old is not null) Retire(old);
            WakeDriver();
        }
        finally
        {
            Volatile.Write(ref _reconnecting, 0);
        }
    }

    /// <summary>Closes a replaced connection once libnbd gave back every command (it completes them all with an error
    /// when the connection dies, so this is quick); up to 30 s.</summary>
    private static void Retire(NbdConnection old)
    {
        var deadline = Environment.TickCount64 + 30_000;
        while (Volatile.Read(ref old.InFlight) > 0 && Environment.TickCount64 < deadline) Thread.Sleep(5);
        old.Dispose();
    }

    /// <summary>Waits up to <paramref name="deadline"/> for the commands in flight, then closes the connection and
    /// the poller.</summary>
    public void Close(long deadline)
    {
        NbdConnection? conn;
        lock (_poller)
        {
            _disposed = true;
            conn = _current;
            _current = null;
        }
        if (conn is not null)
        {
            while (Volatile.Read(ref conn.InFlight) > 0 && Environment.TickCount64 < deadline) Thread.Sleep(1);
            conn.Dispose();
        }
        // The poller stays open while a channel may still have it in its reactor's epoll set: closed now, its number
        // could be reused by another file, which that channel's RemoveWakeSource would then take out of the set.
        lock (_poller)
        {
            if (_channels.Length == 0) _poller.Dispose();
        }
    }

    public void Dispose() => Close(Environment.TickCount64 + 30_000);
}
