using System.Net.Sockets;
using BlkTarget.Storage.Interop;

namespace BlkTarget.Vhost.Protocol;

/// <summary>Thrown when a peer breaks the framing rules; the connection is closed, never the process.</summary>
public sealed class VhostUserProtocolException(string message) : Exception(message);

/// <summary>
/// One received message: header, payload and the descriptors that came with it. Disposing it closes every
/// descriptor the handler did not take, so a rejected message never leaks an fd.
/// </summary>
public sealed class ReceivedMessage : IDisposable
{
    private readonly List<OwnedFd> _fds;

    internal ReceivedMessage(MessageHeader header, byte[] payload, List<OwnedFd> fds)
    {
        Header = header;
        Payload = payload;
        _fds = fds;
    }

    public MessageHeader Header { get; }
    public ReadOnlySpan<byte> PayloadSpan => Payload;
    public byte[] Payload { get; }
    public int FdCount => _fds.Count;

    /// <summary>Transfers ownership of descriptor <paramref name="index"/> to the caller.</summary>
    public OwnedFd TakeFd(int index)
    {
        var fd = _fds[index];
        _fds[index] = OwnedFd.Invalid;
        return fd;
    }

    public void Dispose()
    {
        foreach (var fd in _fds) fd.Dispose();
        _fds.Clear();
    }
}

/// <summary>
/// Framing of vhost-user over a connected Unix stream socket: header, payload, SCM_RIGHTS descriptors.
/// Used by the backend session and by our own frontend.
/// </summary>
public sealed class VhostUserConnection(Socket socket) : IDisposable
{
    private readonly byte[] _header = new byte[MessageHeader.Length];
    private readonly byte[] _send = new byte[MessageHeader.Length + MessageHeader.MaxPayload];

    public Socket Socket { get; } = socket;

    /// <summary>Receives one message; null when the peer closed the connection cleanly between messages.</summary>
    public ReceivedMessage? Receive()
    {
        var fds = new List<OwnedFd>();
        try
        {
            var first = UnixSocketFds.Receive(Socket, _header, fds);
            if (first.Bytes == 0)
            {
                DisposeAll(fds);
                return null;
            }
            if (first.ControlTruncated) throw new VhostUserProtocolException("ancillary data truncated (too many descriptors)");
            if (first.Bytes < MessageHeader.Length && !UnixSocketFds.ReceiveExactly(Socket, _header.AsSpan(first.Bytes)))
                throw new VhostUserProtocolException("connection closed inside a message header");
            var header = MessageHeader.Read(_header);
            if (header.Size > MessageHeader.MaxPayload)
                throw new VhostUserProtocolException($"payload of {header.Size} bytes exceeds {MessageHeader.MaxPayload} ({header.Request})");
            var payload = header.Size == 0 ? [] : new byte[header.Size];
            if (!UnixSocketFds.ReceiveExactly(Socket, payload))
                throw new VhostUserProtocolException("connection closed inside a message payload");
            return new ReceivedMessage(header, payload, fds);
        }
        catch
        {
            DisposeAll(fds);
            throw;
        }
    }

    public void Send(VhostUserRequest request, uint flags, ReadOnlySpan<byte> payload, ReadOnlySpan<int> fds = default)
    {
        if (payload.Length > MessageHeader.MaxPayload) throw new ArgumentException("payload too large", nameof(payload));
        new MessageHeader(request, flags | MessageHeader.Version, (uint)payload.Length).Write(_send);
        payload.CopyTo(_send.AsSpan(MessageHeader.Length));
        UnixSocketFds.Send(Socket, _send.AsSpan(0, MessageHeader.Length + payload.Length), fds);
    }

    /// <summary>Sends a backend-to-frontend request (on the backend request channel).</summary>
    public void Send(VhostUserBackendRequest request, uint flags, ReadOnlySpan<byte> payload) => Send((VhostUserRequest)request, flags, payload);

    /// <summary>Sends a reply to <paramref name="request"/> (REPLY flag set).</summary>
    public void Reply(VhostUserRequest request, ReadOnlySpan<byte> payload) => Send(request, MessageHeader.ReplyFlag, payload);

    public void ReplyU64(VhostUserRequest request, ulong value)
    {
        Span<byte> p = stackalloc byte[8];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(p, value);
        Reply(request, p);
    }

    private static void DisposeAll(List<OwnedFd> fds)
    {
        foreach (var fd in fds) fd.Dispose();
        fds.Clear();
    }

    public void Dispose() => Socket.Dispose();
}
