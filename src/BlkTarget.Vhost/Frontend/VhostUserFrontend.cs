using System.Buffers.Binary;
using System.Net.Sockets;
using BlkTarget.Storage.Interop;
using BlkTarget.Vhost.Protocol;
using BlkTarget.Vhost.Queues;

namespace BlkTarget.Vhost.Frontend;

/// <summary>A backend refused a request (failure ack, failed GET_CONFIG) or answered out of protocol.</summary>
public sealed class VhostUserFrontendException(string message, VhostUserRequest request, ulong ackValue = 0) : Exception(message)
{
    public VhostUserRequest Request { get; } = request;
    /// <summary>The non-zero REPLY_ACK value, when the failure came as an ack.</summary>
    public ulong AckValue { get; } = ackValue;
}

/// <summary>
/// The QEMU side of one vhost-user connection to a vhost-user-blk backend (ours, qemu-storage-daemon, SPDK):
/// connects, negotiates in QEMU 7.2's order, reads the virtio-blk config, and starts and stops queues driven
/// by <see cref="QueueDriver"/>s (split or packed) in a <see cref="GuestMemoryArena"/>.
/// <para>
/// Control-path only and single-threaded: call it from one thread at a time. Set messages carry NEED_REPLY
/// when REPLY_ACK was negotiated, and a failure ack throws <see cref="VhostUserFrontendException"/>. Raw
/// send/receive is exposed for tests that speak out of turn.
/// </para>
/// </summary>
public sealed class VhostUserFrontend : IDisposable
{
    private readonly VhostUserConnection _connection;
    private readonly List<MemoryRegionDescription> _addedRegions = [];

    private VhostUserFrontend(Socket socket, VhostUserFrontendOptions options)
    {
        _connection = new VhostUserConnection(socket);
        Options = options;
    }

    public VhostUserFrontendOptions Options { get; }
    public VhostUserConnection Connection => _connection;

    /// <summary>Features the backend offered (second GET_FEATURES of the handshake).</summary>
    public ulong OfferedFeatures { get; private set; }
    public ProtocolFeatures OfferedProtocolFeatures { get; private set; }
    public ProtocolFeatures AckedProtocolFeatures { get; private set; }
    /// <summary>What the last SET_FEATURES acked (0 before the first start).</summary>
    public ulong AckedFeatures { get; private set; }
    /// <summary>GET_QUEUE_NUM's answer, or 1 when the backend lacks MQ.</summary>
    public int BackendQueueCount { get; private set; } = 1;
    /// <summary>GET_MAX_MEM_SLOTS's answer, or 0 without CONFIGURE_MEM_SLOTS.</summary>
    public ulong MaxMemSlots { get; private set; }
    /// <summary>
    /// The inflight area (INFLIGHT_SHMFD): created by the first <see cref="Start"/> with GET_INFLIGHT_FD and sent with
    /// SET_INFLIGHT_FD on every start, as QEMU does. Owned by this frontend (disposed with it) until taken with
    /// <see cref="TakeInflight"/>; set it on a new frontend to reconnect with the area a previous one kept.
    /// </summary>
    public InflightArea? Inflight { get; set; }

    /// <summary>Drops the inflight area, as QEMU's vhost-user-blk does at a device reset: the next <see cref="Start"/>
    /// asks the backend for a fresh one.</summary>
    public void ResetInflight()
    {
        Inflight?.Dispose();
        Inflight = null;
    }

    /// <summary>Hands the inflight area to the caller (who keeps it for the next connection).</summary>
    public InflightArea? TakeInflight()
    {
        var area = Inflight;
        Inflight = null;
        return area;
    }

    /// <summary>The config read during the handshake, or null when CONFIG was not negotiated.</summary>
    public VirtioBlkConfig? Config { get; private set; }

    public bool ReplyAckNegotiated => (AckedProtocolFeatures & ProtocolFeatures.ReplyAck) != 0;
    /// <summary>Whether the backend offers VHOST_USER_F_PROTOCOL_FEATURES (bit 30).</summary>
    public bool ProtocolFeaturesOffered => (OfferedFeatures & VirtioFeatures.Bit(VirtioFeatures.VhostUserProtocolFeatures)) != 0;

    /// <summary>Connects and runs the handshake (QEMU 7.2's connect and realize steps, up to GET_CONFIG).</summary>
    public static VhostUserFrontend Connect(string socketPath, VhostUserFrontendOptions? options = null, TimeSpan? connectTimeout = null)
    {
        var frontend = Open(socketPath, options, connectTimeout);
        try
        {
            frontend.Handshake();
            return frontend;
        }
        catch
        {
            frontend.Dispose();
            throw;
        }
    }

    /// <summary>Connects without saying anything (for tests that want to speak first and out of turn).
    /// Retries while the socket does not exist or refuses, until <paramref name="connectTimeout"/>.</summary>
    public static VhostUserFrontend Open(string socketPath, VhostUserFrontendOptions? options = null, TimeSpan? connectTimeout = null)
    {
        options ??= new VhostUserFrontendOptions();
        long deadline = Environment.TickCount64 + (long)(connectTimeout ?? TimeSpan.FromSeconds(5)).TotalMilliseconds;
        while (true)
        {
            var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                socket.Connect(new UnixDomainSocketEndPoint(socketPath));
                int timeout = (int)Math.Min(options.ReplyTimeout.TotalMilliseconds, int.MaxValue);
                socket.ReceiveTimeout = timeout;
                socket.SendTimeout = timeout;
                return new VhostUserFrontend(socket, options);
            }
            catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionRefused or SocketError.AddressNotAvailable or SocketError.AddressFamilyNotSupported
                                              || !File.Exists(socketPath))
            {
                socket.Dispose();
                if (Environment.TickCount64 >= deadline)
                    throw new IOException(File.Exists(socketPath) ? $"cannot connect to {socketPath}: {e.Message}"
                        : $"cannot connect to {socketPath}: no such socket (is the target serving it?)", e);
                Thread.Sleep(20);
            }
            catch
            {
                socket.Dispose();
                throw;
            }
        }
    }

    /// <summary>
    /// QEMU 7.2 at connect and realize: GET_FEATURES; GET/SET_PROTOCOL_FEATURES (if bit 30); GET_QUEUE_NUM (if
    /// MQ); GET_MAX_MEM_SLOTS (if CONFIGURE_MEM_SLOTS); SET_OWNER; GET_FEATURES again; GET_CONFIG (if CONFIG).
    /// </summary>
    public void Handshake()
    {
        OfferedFeatures = GetFeatures();
        if (ProtocolFeaturesOffered)
        {
            OfferedProtocolFeatures = GetProtocolFeatures();
            var ack = OfferedProtocolFeatures & Options.ProtocolFeatures;
            SetProtocolFeatures(ack);
        }
        if ((AckedProtocolFeatures & ProtocolFeatures.Mq) != 0) BackendQueueCount = (int)GetQueueNum();
        if ((AckedProtocolFeatures & ProtocolFeatures.ConfigureMemSlots) != 0) MaxMemSlots = GetMaxMemSlots();
        if ((AckedProtocolFeatures & ProtocolFeatures.BackendReq) != 0) SetBackendReqFd();
        SetOwner();
        OfferedFeatures = GetFeatures();
        if ((AckedProtocolFeatures & ProtocolFeatures.Config) != 0)
            Config = VirtioBlkConfig.Parse(GetConfig(0, Options.ConfigSize));
    }

    /// <summary>The features SET_FEATURES will ack: what the backend offers and these options support.</summary>
    public ulong FeaturesToAck => OfferedFeatures & Options.SupportedFeatures;

    public bool HasFeature(int bit) => (AckedFeatures & VirtioFeatures.Bit(bit)) != 0;

    /// <summary>
    /// QEMU 7.2 at DRIVER_OK: with INFLIGHT_SHMFD, GET_INFLIGHT_FD (first start only: <see cref="Inflight"/> is kept)
    /// and SET_INFLIGHT_FD; then SET_FEATURES, the memory table, then per queue SET_VRING_NUM, _BASE, _ADDR, _KICK,
    /// _CALL, and finally SET_VRING_ENABLE(1) for every queue (when protocol features are in use and
    /// <paramref name="enable"/> is set). Each queue starts from its <see cref="QueueDriver.NextBase"/>.
    /// </summary>
    public void Start(GuestMemoryArena arena, IReadOnlyList<QueueDriver> queues, bool enable = true)
    {
        if ((AckedProtocolFeatures & ProtocolFeatures.InflightShmfd) != 0 && queues.Count > 0)
        {
            ushort numQueues = (ushort)(queues.Max(q => q.Index) + 1), queueSize = (ushort)queues[0].Size;
            if (Inflight is { } kept && (kept.Description.NumQueues != numQueues || kept.Description.QueueSize != queueSize)) ResetInflight();
            Inflight ??= GetInflightFd(numQueues, queueSize);
            if (Inflight is not null) SetInflightFd(Inflight);
        }
        ulong features = FeaturesToAck & ~VirtioFeatures.Bit(VirtioFeatures.RingPacked);
        if (queues.Count > 0 && queues[0].Packed)
        {
            if ((OfferedFeatures & VirtioFeatures.Bit(VirtioFeatures.RingPacked)) == 0)
                throw new VhostUserFrontendException("packed queues, but the backend does not offer VIRTIO_F_RING_PACKED", VhostUserRequest.SetFeatures);
            features |= VirtioFeatures.Bit(VirtioFeatures.RingPacked);
        }
        if (queues.Any(q => q.Packed != queues[0].Packed)) throw new ArgumentException("all queues of a device use one ring layout", nameof(queues));
        SetFeatures(features);
        bool eventIdx = (features & VirtioFeatures.Bit(VirtioFeatures.RingEventIdx)) != 0;
        foreach (var q in queues) q.EventIdx = eventIdx;
        SetMemory(arena);
        foreach (var q in queues)
        {
            SetVringNum(q.Index, (uint)q.Size);
            SetVringBase(q.Index, q.NextBase);
            SetVringAddr(q.Address);
            SetVringKick(q.Index, q.KickFd);
            SetVringCall(q.Index, q.CallFd);
        }
        if (enable) EnableQueues(queues, true);
    }

    /// <summary>SET_VRING_ENABLE for each queue; does nothing when SET_FEATURES did not ack bit 30 (then rings run
    /// as soon as they are started, and QEMU does not send it either).</summary>
    public void EnableQueues(IReadOnlyList<QueueDriver> queues, bool enable)
    {
        if ((AckedFeatures & VirtioFeatures.Bit(VirtioFeatures.VhostUserProtocolFeatures)) == 0) return;
        foreach (var q in queues) SetVringEnable(q.Index, enable);
    }

    /// <summary>
    /// QEMU 7.2 at stop: SET_VRING_ENABLE(0) then GET_VRING_BASE per queue. The backend answers once the queue is
    /// drained. Each queue's <see cref="QueueDriver.NextBase"/> takes the answer; the answers are returned.
    /// </summary>
    public uint[] Stop(IReadOnlyList<QueueDriver> queues)
    {
        EnableQueues(queues, false);
        var bases = new uint[queues.Count];
        for (int i = 0; i < queues.Count; i++)
        {
            bases[i] = GetVringBase(queues[i].Index);
            queues[i].NextBase = bases[i];
        }
        return bases;
    }

    /// <summary>Describes the arena to the backend: SET_MEM_TABLE, or with <see cref="VhostUserFrontendOptions.UseAddMemReg"/>
    /// (and CONFIGURE_MEM_SLOTS) REM_MEM_REG for regions no longer present and ADD_MEM_REG for new ones.</summary>
    public void SetMemory(GuestMemoryArena arena)
    {
        if (Options.UseAddMemReg && (AckedProtocolFeatures & ProtocolFeatures.ConfigureMemSlots) != 0)
        {
            var wanted = arena.Regions.ToArray();
            foreach (var old in _addedRegions.Where(r => !wanted.Contains(r)).ToList())
            {
                RemoveMemoryRegion(old);
                _addedRegions.Remove(old);
            }
            foreach (var region in wanted.Where(r => !_addedRegions.Contains(r)))
            {
                AddMemoryRegion(region, arena.MemoryFd.Fd);
                _addedRegions.Add(region);
            }
            return;
        }
        SetMemTable(arena.Regions, arena.MemoryFd.Fd);
    }

    // ---- individual messages ----

    public ulong GetFeatures() => RequestU64(VhostUserRequest.GetFeatures);

    public void SetFeatures(ulong features)
    {
        SendSetU64(VhostUserRequest.SetFeatures, features);
        AckedFeatures = features;
    }

    public ProtocolFeatures GetProtocolFeatures() => (ProtocolFeatures)RequestU64(VhostUserRequest.GetProtocolFeatures);

    /// <summary>Sent without NEED_REPLY, as QEMU does: REPLY_ACK is what is being negotiated.</summary>
    public void SetProtocolFeatures(ProtocolFeatures features)
    {
        Span<byte> p = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(p, (ulong)features);
        _connection.Send(VhostUserRequest.SetProtocolFeatures, 0, p);
        AckedProtocolFeatures = features;
    }

    public ulong GetQueueNum() => RequestU64(VhostUserRequest.GetQueueNum);

    public ulong GetMaxMemSlots() => RequestU64(VhostUserRequest.GetMaxMemSlots);

    public void SetOwner() => SendSet(VhostUserRequest.SetOwner, []);

    public void ResetDevice() => SendSet(VhostUserRequest.ResetDevice, []);

    public void SetMemTable(ReadOnlySpan<MemoryRegionDescription> regions, int fd)
    {
        if (regions.Length > MemoryTablePayload.MaxRegions) throw new ArgumentException("too many regions", nameof(regions));
        Span<byte> payload = stackalloc byte[MemoryTablePayload.HeaderLength + MemoryTablePayload.MaxRegions * MemoryRegionDescription.Length];
        int length = MemoryTablePayload.Write(payload, regions);
        Span<int> fds = stackalloc int[regions.Length];
        fds.Fill(fd);
        SendSet(VhostUserRequest.SetMemTable, payload[..length], fds);
    }

    public void AddMemoryRegion(MemoryRegionDescription region, int fd)
    {
        Span<byte> payload = stackalloc byte[SingleRegionPayload.Length];
        SingleRegionPayload.Write(payload, region);
        SendSet(VhostUserRequest.AddMemReg, payload, [fd]);
    }

    public void RemoveMemoryRegion(MemoryRegionDescription region)
    {
        Span<byte> payload = stackalloc byte[SingleRegionPayload.Length];
        SingleRegionPayload.Write(payload, region);
        SendSet(VhostUserRequest.RemMemReg, payload);
    }

    public void SetVringNum(int index, uint num) => SendSetState(VhostUserRequest.SetVringNum, index, num);

    /// <summary>SET_VRING_BASE: split rings the avail index, packed rings <see cref="PackedRingLayout.EncodeBase"/>.</summary>
    public void SetVringBase(int index, uint vringBase) => SendSetState(VhostUserRequest.SetVringBase, index, vringBase);

    public void SetVringAddr(VringAddress address)
    {
        Span<byte> payload = stackalloc byte[VringAddress.Length];
        address.Write(payload);
        SendSet(VhostUserRequest.SetVringAddr, payload);
    }

    /// <summary>SET_VRING_KICK with <paramref name="fd"/>, or with the no-fd bit when fd is negative.</summary>
    public void SetVringKick(int index, int fd) => SendVringFd(VhostUserRequest.SetVringKick, index, fd);

    public void SetVringCall(int index, int fd) => SendVringFd(VhostUserRequest.SetVringCall, index, fd);

    public void SetVringErr(int index, int fd) => SendVringFd(VhostUserRequest.SetVringErr, index, fd);

    public void SetVringEnable(int index, bool enable) => SendSetState(VhostUserRequest.SetVringEnable, index, enable ? 1u : 0u);

    /// <summary>Stops the queue and returns the backend's base: split rings last_avail_idx, packed rings both positions
    /// with their wrap counters (<see cref="PackedRingLayout.EncodeBase"/>).</summary>
    public uint GetVringBase(int index)
    {
        Span<byte> payload = stackalloc byte[VringState.Length];
        new VringState((uint)index, 0).Write(payload);
        _connection.Send(VhostUserRequest.GetVringBase, 0, payload);
        using var reply = ReceiveReply(VhostUserRequest.GetVringBase);
        if (reply.Payload.Length < VringState.Length) throw new VhostUserFrontendException($"GET_VRING_BASE reply of {reply.Payload.Length} bytes", VhostUserRequest.GetVringBase);
        var state = VringState.Read(reply.Payload);
        if (state.Index != (uint)index) throw new VhostUserFrontendException($"GET_VRING_BASE for queue {index} answered for queue {state.Index}", VhostUserRequest.GetVringBase);
        return state.Num;
    }

    /// <summary>GET_INFLIGHT_FD for <paramref name="numQueues"/> queues of <paramref name="queueSize"/>: the area the
    /// backend created, or null when it answered mmap_size 0 (no area; QEMU then runs without).</summary>
    public InflightArea? GetInflightFd(ushort numQueues, ushort queueSize)
    {
        Span<byte> payload = stackalloc byte[InflightDescription.Length];
        new InflightDescription(0, 0, numQueues, queueSize).Write(payload);
        _connection.Send(VhostUserRequest.GetInflightFd, 0, payload);
        using var reply = ReceiveReply(VhostUserRequest.GetInflightFd);
        if (reply.Payload.Length < InflightDescription.MinLength)
            throw new VhostUserFrontendException($"GET_INFLIGHT_FD reply of {reply.Payload.Length} bytes", VhostUserRequest.GetInflightFd);
        var description = InflightDescription.Read(reply.Payload);
        if (description.MmapSize == 0) return null;
        if (reply.FdCount != 1) throw new VhostUserFrontendException($"GET_INFLIGHT_FD reply with {reply.FdCount} descriptors", VhostUserRequest.GetInflightFd);
        return new InflightArea(reply.TakeFd(0), description);
    }

    /// <summary>SET_INFLIGHT_FD with <paramref name="area"/>'s fd and description.</summary>
    public void SetInflightFd(InflightArea area)
    {
        Span<byte> payload = stackalloc byte[InflightDescription.Length];
        area.Description.Write(payload);
        SendSet(VhostUserRequest.SetInflightFd, payload, [area.Fd]);
    }

    // ---- dirty page logging (live migration) ----

    /// <summary>
    /// SET_LOG_BASE with <paramref name="log"/>'s fd and {mmap_size, mmap_offset}. With LOG_SHMFD negotiated the
    /// backend answers whatever NEED_REPLY says (QEMU 7.2 waits for that answer); a u64 answer other than 0 is a refusal.
    /// </summary>
    /// <exception cref="VhostUserFrontendException">the backend refused the log.</exception>
    public void SetLogBase(DirtyLogArea log)
    {
        Span<byte> payload = stackalloc byte[LogDescription.Length];
        log.Description.Write(payload);
        _connection.Send(VhostUserRequest.SetLogBase, 0, payload, [log.Fd]);
        if ((AckedProtocolFeatures & ProtocolFeatures.LogShmfd) == 0) return;
        using var reply = ReceiveReply(VhostUserRequest.SetLogBase);
        ulong value = reply.Payload.Length >= 8 ? BinaryPrimitives.ReadUInt64LittleEndian(reply.Payload) : 0;
        if (value != 0) throw new VhostUserFrontendException($"backend refused SET_LOG_BASE ({value})", VhostUserRequest.SetLogBase, value);
    }

    /// <summary>SET_LOG_FD with an eventfd the backend may signal when it changed the log.</summary>
    public void SetLogFd(int fd) => SendSet(VhostUserRequest.SetLogFd, [], [fd]);

    /// <summary>
    /// What QEMU 7.2 does when a migration starts (vhost_migration_log): SET_LOG_BASE, SET_FEATURES with
    /// VHOST_F_LOG_ALL added, then SET_VRING_ADDR per queue with VHOST_VRING_F_LOG and log_guest_addr = the used
    /// ring's guest-physical address (a packed ring's device event area). <see cref="StopLogging"/> undoes it.
    /// </summary>
    public void StartLogging(DirtyLogArea log, IReadOnlyList<QueueDriver> queues)
    {
        SetLogBase(log);
        SetFeatures(AckedFeatures | VirtioFeatures.Bit(VirtioFeatures.LogAll));
        foreach (var q in queues) SetVringAddr(q.Address with { Flags = VringAddress.LogFlag, LogGuestAddr = LogGuestAddr(q) });
    }

    private static ulong LogGuestAddr(QueueDriver queue) => queue switch
    {
        VirtqueueDriver split => split.UsedRing.Gpa,
        PackedVirtqueueDriver packed => packed.DeviceEventArea.Gpa,
        _ => throw new ArgumentException($"no used area known for {queue.GetType().Name}", nameof(queue)),
    };

    /// <summary>SET_FEATURES without VHOST_F_LOG_ALL, then SET_VRING_ADDR without VHOST_VRING_F_LOG per queue.</summary>
    public void StopLogging(IReadOnlyList<QueueDriver> queues)
    {
        SetFeatures(AckedFeatures & ~VirtioFeatures.Bit(VirtioFeatures.LogAll));
        foreach (var q in queues) SetVringAddr(q.Address);
    }

    /// <summary>Reads <paramref name="size"/> bytes of config space; throws when the backend refuses (a reply
    /// whose size differs from the request).</summary>
    public byte[] GetConfig(uint offset, uint size) =>
        TryGetConfig(offset, size) ?? throw new VhostUserFrontendException($"GET_CONFIG of {size} bytes at {offset} refused", VhostUserRequest.GetConfig);

    /// <summary>As <see cref="GetConfig"/>, but null when the backend signals failure.</summary>
    public byte[]? TryGetConfig(uint offset, uint size)
    {
        if (size > MessageHeader.MaxPayload - ConfigHeader.Length) throw new ArgumentOutOfRangeException(nameof(size));
        var payload = new byte[ConfigHeader.Length + size];
        new ConfigHeader(offset, size, 0).Write(payload);
        _connection.Send(VhostUserRequest.GetConfig, 0, payload);
        using var reply = ReceiveReply(VhostUserRequest.GetConfig);
        if (reply.Payload.Length < ConfigHeader.Length) throw new VhostUserFrontendException($"GET_CONFIG reply of {reply.Payload.Length} bytes", VhostUserRequest.GetConfig);
        var header = ConfigHeader.Read(reply.Payload);
        if (header.Size != size || reply.Payload.Length != ConfigHeader.Length + size) return null;
        return reply.Payload[ConfigHeader.Length..];
    }

    /// <summary>SET_CONFIG (flags 0: a driver write).</summary>
    public void SetConfig(uint offset, ReadOnlySpan<byte> data)
    {
        var payload = new byte[ConfigHeader.Length + data.Length];
        new ConfigHeader(offset, (uint)data.Length, 0).Write(payload);
        data.CopyTo(payload.AsSpan(ConfigHeader.Length));
        SendSet(VhostUserRequest.SetConfig, payload);
    }

    // ---- raw access, for tests ----

    /// <summary>Sends any message as given (the version bits are added).</summary>
    public void SendRaw(VhostUserRequest request, uint flags, ReadOnlySpan<byte> payload, ReadOnlySpan<int> fds = default) =>
        _connection.Send(request, flags, payload, fds);

    /// <summary>Sends bytes as they are, header included, with optional descriptors.</summary>
    public void SendRawBytes(ReadOnlySpan<byte> bytes, ReadOnlySpan<int> fds = default) => UnixSocketFds.Send(_connection.Socket, bytes, fds);

    /// <summary>Receives one message; null when the backend closed the connection.</summary>
    public ReceivedMessage? ReceiveRaw() => Translate(() => _connection.Receive());

    /// <summary>Sends a message with NEED_REPLY and returns the u64 the backend answers with (the REPLY_ACK
    /// value: 0 = success).</summary>
    public ulong SendWithAck(VhostUserRequest request, ReadOnlySpan<byte> payload, ReadOnlySpan<int> fds = default)
    {
        _connection.Send(request, MessageHeader.NeedReplyFlag, payload, fds);
        return ReceiveU64(request);
    }

    /// <summary>Waits until the backend closes the connection, discarding anything it sends. False when it
    /// is still open after <paramref name="timeout"/>.</summary>
    public bool WaitForClose(TimeSpan timeout)
    {
        var socket = _connection.Socket;
        int saved = socket.ReceiveTimeout;
        long deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        try
        {
            while (true)
            {
                long left = deadline - Environment.TickCount64;
                if (left <= 0) return false;
                socket.ReceiveTimeout = (int)Math.Min(left, int.MaxValue);
                try
                {
                    using var message = _connection.Receive();
                    if (message is null) return true;
                }
                catch (IOException e) when (e.HResult == Errno.EAGAIN)
                {
                    return false;
                }
                catch (Exception e) when (e is IOException or SocketException or VhostUserProtocolException)
                {
                    return true;
                }
            }
        }
        finally
        {
            try { socket.ReceiveTimeout = saved; }
            catch (ObjectDisposedException) { }
        }
    }

    // ---- plumbing ----

    private ulong RequestU64(VhostUserRequest request)
    {
        _connection.Send(request, 0, []);
        return ReceiveU64(request);
    }

    private ulong ReceiveU64(VhostUserRequest request)
    {
        using var reply = ReceiveReply(request);
        if (reply.Payload.Length != 8) throw new VhostUserFrontendException($"{request}: reply of {reply.Payload.Length} bytes, expected 8", request);
        return BinaryPrimitives.ReadUInt64LittleEndian(reply.Payload);
    }

    private ReceivedMessage ReceiveReply(VhostUserRequest request)
    {
        var reply = Translate(() => _connection.Receive())
            ?? throw new VhostUserFrontendException($"backend closed the connection instead of answering {request}", request);
        if (!reply.Header.IsReply || reply.Header.Request != request)
        {
            var header = reply.Header;
            reply.Dispose();
            throw new VhostUserFrontendException($"expected a reply to {request}, got {header.Request} with flags 0x{header.Flags:x}", request);
        }
        return reply;
    }

    private static ReceivedMessage? Translate(Func<ReceivedMessage?> receive)
    {
        try
        {
            return receive();
        }
        catch (IOException e) when (e.HResult == Errno.EAGAIN)
        {
            throw new TimeoutException("the backend did not answer in time", e);
        }
    }

    /// <summary>Sends a message without a natural reply; with REPLY_ACK it asks for an ack and throws on failure.</summary>
    private void SendSet(VhostUserRequest request, ReadOnlySpan<byte> payload, ReadOnlySpan<int> fds = default)
    {
        if (!ReplyAckNegotiated)
        {
            _connection.Send(request, 0, payload, fds);
            return;
        }
        ulong ack = SendWithAck(request, payload, fds);
        if (ack != 0) throw new VhostUserFrontendException($"backend refused {request} (ack {ack})", request, ack);
    }

    private void SendSetU64(VhostUserRequest request, ulong value)
    {
        Span<byte> p = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(p, value);
        SendSet(request, p);
    }

    private void SendSetState(VhostUserRequest request, int index, uint num)
    {
        Span<byte> p = stackalloc byte[VringState.Length];
        new VringState((uint)index, num).Write(p);
        SendSet(request, p);
    }

    private void SendVringFd(VhostUserRequest request, int index, int fd)
    {
        if (index is < 0 or > 255) throw new ArgumentOutOfRangeException(nameof(index));
        ulong value = (uint)index | (fd < 0 ? VringFdPayload.NoFdFlag : 0);
        Span<byte> p = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(p, value);
        if (fd < 0) SendSet(request, p);
        else SendSet(request, p, [fd]);
    }

    private VhostUserConnection? _backendChannel;

    /// <summary>Creates the backend request channel (a socketpair) and sends the backend its end
    /// (SET_BACKEND_REQ_FD), as QEMU does when BACKEND_REQ is negotiated.</summary>
    public void SetBackendReqFd()
    {
        var (ours, theirs) = UnixSocketFds.CreatePair();
        using (theirs)
        {
            try
            {
                SendSet(VhostUserRequest.SetBackendReqFd, [], [(int)theirs.Handle]);
            }
            catch
            {
                ours.Dispose();
                throw;
            }
        }
        _backendChannel?.Dispose();
        _backendChannel = new VhostUserConnection(ours);
    }

    /// <summary>Waits up to <paramref name="timeout"/> for a request from the backend on the backend request
    /// channel; null when none came (or there is no channel). The caller disposes the message.</summary>
    public ReceivedMessage? ReceiveBackendRequest(TimeSpan timeout)
    {
        if (_backendChannel is not { } channel) return null;
        if (!channel.Socket.Poll((int)Math.Min(int.MaxValue, timeout.TotalMicroseconds), System.Net.Sockets.SelectMode.SelectRead)) return null;
        return channel.Receive();
    }

    /// <summary>Closes the connection: to the backend, the frontend went away.</summary>
    public void Dispose()
    {
        _backendChannel?.Dispose();
        _connection.Dispose();
        Inflight?.Dispose();
        Inflight = null;
    }
}
