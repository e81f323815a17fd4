using Microsoft.Extensions.Logging;

namespace BlkTarget.Storage.Nbd;

/// <summary>
/// An export of an NBD server (qemu-nbd, nbdkit, anything that speaks NBD) as a disk, through libnbd's asynchronous
/// API. Connections are opened here, at open (connecting blocks, reactors must not): one when the server does not
/// allow multi-conn, since then a flush on one connection need not cover writes made on another; with multi-conn,
/// <see cref="NbdDiskOptions.Connections"/> of them, and each new channel (one per reactor) takes the link with the
/// fewest channels, so that reactors normally do not share a socket.
/// <para>
/// What the server cannot do is not advertised: no FLUSH (and no volatile cache) without NBD_FLAG_SEND_FLUSH, no
/// discard without TRIM, no write-zeroes without WRITE_ZEROES; FUA without server FUA becomes write + flush. TRIM is a
/// hint in NBD (the range's contents become unspecified), as DISCARD is here.
/// </para>
/// </summary>
public sealed class NbdDisk : IBlockDevice
{
    /// <summary>NBD's length fields are 32 bits: longer discards and zeroings are split by the device model.</summary>
    private const ulong MaxZeroingBytes = 1UL << 30;

    private readonly NbdLink[] _links;
    private readonly ILogger _log;
    private bool _disposed;

    private NbdDisk(NbdDiskOptions options, NbdLink[] links, BlockDeviceInfo info, bool multiConn, bool canFlush, bool canFua, ILogger log)
    {
        Options = options;
        _links = links;
        Info = info;
        MultiConn = multiConn;
        CanFlush = canFlush;
        CanFua = canFua;
        _log = log;
    }

    public NbdDiskOptions Options { get; }

    public BlockDeviceInfo Info { get; }

    /// <summary>Whether the server allows multi-conn (then <see cref="Connections"/> may be more than one).</summary>
    public bool MultiConn { get; }

    public int Connections => _links.Length;

    internal bool CanFlush { get; }
    internal bool CanFua { get; }

    /// <summary>Reconnects made so far over all connections (tests).</summary>
    public long Reconnects => _links.Sum(l => l.Reconnects);

    /// <summary>Connects, reads the export's size and capabilities and, with multi-conn, opens the other connections.</summary>
    /// <exception cref="ArgumentException">the block size is not 512 or 4096.</exception>
    /// <exception cref="IOException">the server cannot be reached or the export does not fit; one sentence.</exception>
    public static NbdDisk Open(NbdDiskOptions options, ILogger log)
    {
        if (options.BlockSize is not (512 or 4096)) throw new ArgumentException($"block size must be 512 or 4096, not {options.BlockSize}");
        var connections = new List<NbdConnection>();
        try
        {
            var first = NbdConnection.Connect(options.Uri);
            connections.Add(first);
            if (first.Size == 0 || first.Size % options.BlockSize != 0)
                throw new IOException($"nbd {options.Uri}: size {first.Size} is not a positive multiple of the block size {options.BlockSize}");
            if (first.MinimumBlock > options.BlockSize)
                throw new IOException($"nbd {options.Uri}: the server's minimum block size is {first.MinimumBlock} bytes, larger than the disk's {options.BlockSize}");
            bool readOnly = options.ReadOnly || first.ReadOnly;
            int wanted = !first.MultiConn ? 1 : options.Connections > 0 ? options.Connections : Math.Clamp(Environment.ProcessorCount, 1, 4);
            while (connections.Count < wanted) connections.Add(NbdConnection.Connect(options.Uri));
            var info = new BlockDeviceInfo(first.Size, options.BlockSize, readOnly, SupportsDiscard: first.CanTrim,
                SupportsWriteZeroes: first.CanZero, HasVolatileCache: first.CanFlush)
            {
                MaxDiscardBytes = MaxZeroingBytes,
                MaxWriteZeroesBytes = MaxZeroingBytes,
            };
            var links = connections.Select(c => new NbdLink(c, options.Uri, !readOnly, log)).ToArray();
            log.LogInformation("nbd {Uri}: opened, {Size} bytes, {Connections} connection(s){MultiConn}, server can: {Capabilities}{ReadOnly}",
                options.Uri, first.Size, links.Length, first.MultiConn ? " (multi-conn)" : "", Capabilities(first), readOnly ? ", read-only" : "");
            return new NbdDisk(options, links, info, first.MultiConn, first.CanFlush, first.CanFua, log);
        }
        catch
        {
            foreach (var c in connections) c.Dispose();
            throw;
        }
    }

    private static string Capabilities(NbdConnection c)
    {
        var can = new List<string>();
        if (c.CanFlush) can.Add("flush");
        if (c.CanFua) can.Add("fua");
        if (c.CanTrim) can.Add("trim");
        if (c.CanZero) can.Add("zero");
        return can.Count == 0 ? "read/write only" : string.Join(" ", can);
    }

    public IBlockChannel OpenChannel(IoContext io, IBlockCompletionSink sink, int maxInFlight)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        NbdLink link;
        lock (_links)
        {
            link = _links.MinBy(l => l.ChannelCount)!;
            var channel = new NbdChannel(this, link, io, sink, maxInFlight, _log);
            link.Attach(channel);
            return channel;
        }
    }

    /// <summary>Waits up to 30 s for the commands still in flight (their channels' reactors drive them), then closes
    /// every connection.</summary>
    public void Dispose()
    {
        lock (_links)
        {
            if (_disposed) return;
            _disposed = true;
        }
        long deadline = Environment.TickCount64 + 30_000;
        foreach (var link in _links) link.Close(deadline);
    }
}
