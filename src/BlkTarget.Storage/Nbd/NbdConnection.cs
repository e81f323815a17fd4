using BlkTarget.Storage.Interop;
using static BlkTarget.Storage.Interop.NbdNative;

namespace BlkTarget.Storage.Nbd;

/// <summary>
/// One connected libnbd handle and what the server said about the export. Connecting blocks (nbd_connect_uri), so it is
/// only done off the reactors: at open, and on a thread-pool thread when <see cref="NbdLink"/> reconnects.
/// <see cref="InFlight"/> counts the commands libnbd holds for it (interlocked: any reactor issues, the completion
/// callback runs on the one that drives the socket).
/// </summary>
internal sealed class NbdConnection : IDisposable
{
    /// <summary>Longest read or write one command carries (libnbd refuses more than 64 MiB; servers often 32 MiB).</summary>
    private const ulong DefaultMaxCommandBytes = 32 << 20;

    public int InFlight;
    private volatile bool _dead;

    private NbdConnection(NbdHandle handle, int socketFd)
    {
        Handle = handle;
        SocketFd = socketFd;
    }

    public NbdHandle Handle { get; }
    /// <summary>The socket libnbd owns (closed by nbd_close); watched by the link's poller.</summary>
    public int SocketFd { get; }
    public ulong Size { get; private init; }
    public bool ReadOnly { get; private init; }
    public bool CanFlush { get; private init; }
    public bool CanFua { get; private init; }
    public bool CanTrim { get; private init; }
    public bool CanZero { get; private init; }
    public bool MultiConn { get; private init; }
    public uint MinimumBlock { get; private init; }
    public ulong MaxCommandBytes { get; private init; }

    /// <summary>Events the link's poller watches the socket for (0: not in the poller). Driving thread only.</summary>
    public uint Watched;

    /// <summary>The connection failed (libnbd reached its DEAD or CLOSED state): nothing more is issued on it; every
    /// command it held was completed with an error by libnbd.</summary>
    public bool Dead => _dead;

    public void MarkDead() => _dead = true;

    /// <summary>Connects to <paramref name="uri"/> and reads the export's size and capabilities.</summary>
    /// <exception cref="IOException">libnbd could not connect or the export is unusable; one sentence.</exception>
    public static NbdConnection Connect(string uri)
    {
        var handle = new NbdHandle();
        try
        {
            nint h = handle.DangerousGetHandle();
            // libnbd zeroes every read buffer first so that a server sending less than asked cannot expose old memory;
            // ours is guest memory holding the guest's own data, and the memset would cost a pass over every read.
            nbd_set_pread_initialize(h, 0);
            if (nbd_connect_uri(h, uri) != 0) throw new IOException($"nbd {uri}: connecting failed: {LastError}", nbd_get_errno());
            int fd = nbd_aio_get_fd(h);
            long size = nbd_get_size(h);
            if (fd < 0 || size < 0) throw new IOException($"nbd {uri}: reading the export failed: {LastError}");
            long minimum = nbd_get_block_size(h, SIZE_MINIMUM);
            long maximum = nbd_get_block_size(h, SIZE_MAXIMUM);
            return new NbdConnection(handle, fd)
            {
                Size = (ulong)size,
                ReadOnly = nbd_is_read_only(h) == 1,
                CanFlush = nbd_can_flush(h) == 1,
                CanFua = nbd_can_fua(h) == 1,
                CanTrim = nbd_can_trim(h) == 1,
                CanZero = nbd_can_zero(h) == 1,
                MultiConn = nbd_can_multi_conn(h) == 1,
                MinimumBlock = minimum > 0 ? (uint)minimum : 1,
                MaxCommandBytes = maximum > 0 ? Math.Min((ulong)maximum, DefaultMaxCommandBytes) : DefaultMaxCommandBytes,
            };
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>Closes the handle and its socket (deferred by the handle's reference count until no call is inside it).</summary>
    public void Dispose()
    {
        _dead = true;
        Handle.Dispose();
    }
}
