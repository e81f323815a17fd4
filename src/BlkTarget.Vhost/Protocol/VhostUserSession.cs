using System.Buffers.Binary;
using BlkTarget.Vhost.Device;
using BlkTarget.Storage.Interop;
using BlkTarget.Vhost.Memory;
using BlkTarget.Vhost.Queues;
using BlkTarget.Vhost.Reactor;
using Microsoft.Extensions.Logging;

namespace BlkTarget.Vhost.Protocol;

/// <summary>
/// The backend's side of one frontend connection: the vhost-user state machine. It answers protocol messages,
/// keeps guest memory and per-queue setup, and starts or stops queues on their reactors when the frontend's
/// requests make them runnable or not. Runs on the connection's thread; queues run on reactors.
/// </summary>
public sealed class VhostUserSession : IDisposable
{
    public const ProtocolFeatures SupportedProtocolFeatures =
        ProtocolFeatures.Mq | ProtocolFeatures.ReplyAck | ProtocolFeatures.Config | ProtocolFeatures.ConfigureMemSlots
        | ProtocolFeatures.BackendReq | ProtocolFeatures.InflightShmfd | ProtocolFeatures.LogShmfd;
    public const int MaxMemSlots = 32;

    private readonly IVhostUserDevice _device;
    private readonly VhostUserConnection _connection;
    private readonly ReactorPool _reactors;
    private readonly int _deviceOffset;
    private readonly ILogger _log;
    private readonly VhostUserSessionOptions _options;
    private readonly VringSetup[] _vrings;
    private readonly List<GuestRegion> _regions = [];
    private readonly BackendRequestChannel _backendChannel = new();
    private GuestMemory _memory = GuestMemory.Empty;
    private ulong _ackedFeatures;
    private ProtocolFeatures _ackedProtocol;
    /// <summary>SET_INFLIGHT_FD's area: every queue started while it is set tracks its requests there.</summary>
    private InflightRegion? _inflight;
    /// <summary>Set when a queue was abandoned with requests in flight: this session never unmaps a region itself
    /// any more. The abandoned queue, which its reactor keeps until the backend has returned every operation,
    /// references the guest memory it used; only once nothing references a region does its SafeHandle unmap it.</summary>
    private bool _keepMappings;
    /// <summary>SET_LOG_BASE's dirty log (live migration), used while LOG_ALL is acked or a ring has VHOST_VRING_F_LOG.</summary>
    private DirtyLog? _dirtyLog;
    /// <summary>SET_LOG_FD's eventfd: kept (and closed with the session), never signalled.</summary>
    private OwnedFd? _logFd;

    /// <summary>A session for one accepted connection; <paramref name="options"/> defaults to <see cref="VhostUserSessionOptions"/>'s
    /// defaults. Throws <see cref="ArgumentOutOfRangeException"/> for invalid options.</summary>
    public VhostUserSession(IVhostUserDevice device, VhostUserConnection connection, ReactorPool reactors, int deviceOffset, ILogger log,
        VhostUserSessionOptions? options = null)
    {
        _options = options ?? new VhostUserSessionOptions();
        _options.Validate();
        _device = device;
        _connection = connection;
        _reactors = reactors;
        _deviceOffset = deviceOffset;
        _log = log;
        _vrings = Enumerable.Range(0, device.QueueCount).Select(_ => new VringSetup()).ToArray();
    }

    public ulong OfferedFeatures => _device.Features | VirtioFeatures.Bit(VirtioFeatures.VhostUserProtocolFeatures) | VirtioFeatures.Bit(VirtioFeatures.LogAll);
    public ulong AckedFeatures => _ackedFeatures;
    public int RunningQueueCount => _vrings.Count(v => v.Running is not null);

    /// <summary>Serves messages until the frontend disconnects. Protocol violations end the session with an
    /// exception; the caller logs it and disposes the session.</summary>
    public void Run()
    {
        while (true)
        {
            using var message = _connection.Receive();
            if (message is null) return;
            if (!message.Header.HasValidVersion)
                throw new VhostUserProtocolException($"unsupported protocol version in flags 0x{message.Header.Flags:x}");
            Handle(message);
        }
    }

    private void Handle(ReceivedMessage message)
    {
        var request = message.Header.Request;
        bool? ok = request switch
        {
            VhostUserRequest.GetFeatures => ReplyU64(request, OfferedFeatures),
            VhostUserRequest.SetFeatures => SetFeatures(message),
            VhostUserRequest.SetOwner => true,
            VhostUserRequest.ResetOwner or VhostUserRequest.ResetDevice => ResetDevice(),
            VhostUserRequest.GetProtocolFeatures => ReplyU64(request, (ulong)SupportedProtocolFeatures),
            VhostUserRequest.SetProtocolFeatures => SetProtocolFeatures(message),
            VhostUserRequest.GetQueueNum => ReplyU64(request, (ulong)_device.QueueCount),
            VhostUserRequest.GetMaxMemSlots => ReplyU64(request, MaxMemSlots),
            VhostUserRequest.SetMemTable => SetMemTable(message),
            VhostUserRequest.AddMemReg => AddMemoryRegion(message),
            VhostUserRequest.RemMemReg => RemoveMemoryRegion(message),
            VhostUserRequest.SetVringNum => SetVringNum(message),
            VhostUserRequest.SetVringBase => SetVringBase(message),
            VhostUserRequest.SetVringAddr => SetVringAddr(message),
            VhostUserRequest.SetVringKick => SetVringKick(message),
            VhostUserRequest.SetVringCall => SetVringCall(message),
            VhostUserRequest.SetVringErr => SetVringErr(message),
            VhostUserRequest.SetVringEnable => SetVringEnable(message),
            VhostUserRequest.GetVringBase => GetVringBase(message),
            VhostUserRequest.GetConfig => GetConfig(message),
            VhostUserRequest.SetConfig => SetConfig(message),
            VhostUserRequest.SetBackendReqFd => SetBackendReqFd(message),
            VhostUserRequest.GetInflightFd => GetInflightFd(message),
            VhostUserRequest.SetInflightFd => SetInflightFd(message),
            VhostUserRequest.SetLogBase => SetLogBase(message),
            VhostUserRequest.SetLogFd => SetLogFd(message),
            _ => null,
        };
        if (ok is null)
        {
            _log.LogWarning("{Device}: unsupported vhost-user request {Request} ({Code})", _device.Name, request, (uint)request);
            if (!message.Header.NeedsReply) throw new VhostUserProtocolException($"unsupported request {(uint)request} without NEED_REPLY");
            ok = false;
        }
        if (HasNaturalReply(request) || request == VhostUserRequest.SetLogBase && LogShmfdAcked) return;
        if (message.Header.NeedsReply && (_ackedProtocol & ProtocolFeatures.ReplyAck) != 0)
            _connection.ReplyU64(request, ok.Value ? 0UL : 1UL);
    }

    private static bool HasNaturalReply(VhostUserRequest request) => request is VhostUserRequest.GetFeatures
        or VhostUserRequest.GetProtocolFeatures or VhostUserRequest.GetQueueNum or VhostUserRequest.GetMaxMemSlots
        or VhostUserRequest.GetVringBase or VhostUserRequest.GetConfig or VhostUserRequest.GetInflightFd;

    private bool ReplyU64(VhostUserRequest request, ulong value)
    {
        _connection.ReplyU64(request, value);
        return true;
    }

    private static ulong ReadU64(ReceivedMessage message)
    {
        if (message.Payload.Length < 8) throw new VhostUserProtocolException($"{message.Header.Request}: payload of {message.Payload.Length} bytes, expected 8");
        return BinaryPrimitives.ReadUInt64LittleEndian(message.Payload);
    }

    private static void RequireLength(ReceivedMessage message, int length)
    {
        if (message.Payload.Length < length)
            throw new VhostUserProtocolException($"{message.Header.Request}: payload of {message.Payload.Length} bytes, expected {length}");
    }

    private bool SetFeatures(ReceivedMessage message)
    {
        ulong features = ReadU64(message);
        if ((features & ~OfferedFeatures) != 0)
        {
            _log.LogError("{Device}: frontend acked features we did not offer: 0x{Extra:x}", _device.Name, features & ~OfferedFeatures);
            return false;
        }
        bool wasLogging = LogAllAcked;
        _ackedFeatures = features;
        // QEMU switches logging on and off with SET_FEATURES while the rings run (and waits for the answer): restart them
        // so that every request in flight from now on is recorded for the log, or none is.
        if (LogAllAcked != wasLogging) RestartRunningQueues();
        _log.LogInformation("{Device}: negotiated features 0x{Features:x} (event_idx={EventIdx}, indirect={Indirect}, packed={Packed})", _device.Name, features,
            (features & VirtioFeatures.Bit(VirtioFeatures.RingEventIdx)) != 0, (features & VirtioFeatures.Bit(VirtioFeatures.RingIndirectDesc)) != 0,
            (features & VirtioFeatures.Bit(VirtioFeatures.RingPacked)) != 0);
        return true;
    }

    private bool SetProtocolFeatures(ReceivedMessage message)
    {
        ulong features = ReadU64(message);
        _ackedProtocol = (ProtocolFeatures)features & SupportedProtocolFeatures;
        _log.LogInformation("{Device}: negotiated protocol features {Features}", _device.Name, _ackedProtocol);
        return ((ProtocolFeatures)features & ~SupportedProtocolFeatures) == 0;
    }

    private bool ProtocolFeaturesAcked => (_ackedFeatures & VirtioFeatures.Bit(VirtioFeatures.VhostUserProtocolFeatures)) != 0;

    // ---- memory ----

    private bool SetMemTable(ReceivedMessage message)
    {
        var descriptions = MemoryTablePayload.Read(message.Payload)
            ?? throw new VhostUserProtocolException("SET_MEM_TABLE: malformed region list");
        if (descriptions.Length != message.FdCount)
        {
            _log.LogError("{Device}: SET_MEM_TABLE with {Regions} regions but {Fds} descriptors", _device.Name, descriptions.Length, message.FdCount);
            return false;
        }
        var mapped = new List<GuestRegion>();
        try
        {
            for (int i = 0; i < descriptions.Length; i++)
            {
                using var fd = message.TakeFd(i);
                mapped.Add(GuestRegion.Map(descriptions[i], fd));
            }
            if (!RegionsAreDisjoint(mapped)) throw new ArgumentException("memory regions overlap");
        }
        catch (Exception e) when (e is IOException or ArgumentException)
        {
            foreach (var region in mapped) region.Dispose();
            _log.LogError("{Device}: SET_MEM_TABLE refused: {Error}", _device.Name, e.Message);
            return false;
        }
        ReplaceMemory(mapped);
        _log.LogInformation("{Device}: guest memory: {Regions} region(s), {Bytes} bytes", _device.Name, mapped.Count, mapped.Sum(r => (decimal)r.Size));
        return true;
    }

    private bool AddMemoryRegion(ReceivedMessage message)
    {
        var description = SingleRegionPayload.Read(message.Payload) ?? throw new VhostUserProtocolException("ADD_MEM_REG: short payload");
        if (_regions.Count >= MaxMemSlots) return false;
        var region = MapSingleFd(message, fd => GuestRegion.Map(description, fd));
        if (region is null) return false;
        var next = new List<GuestRegion>(_regions) { region };
        if (!RegionsAreDisjoint(next))
        {
            region.Dispose();
            _log.LogError("{Device}: ADD_MEM_REG overlaps an existing region", _device.Name);
            return false;
        }
        ReplaceMemory(next);
        _log.LogInformation("{Device}: memory region added: guest 0x{Gpa:x}, {Bytes} bytes ({Regions} region(s))", _device.Name, region.GuestPhysAddr,
            region.Size, _regions.Count);
        return true;
    }

    /// <summary>Maps what the single fd of <paramref name="message"/> holds (ADD_MEM_REG, SET_INFLIGHT_FD). Null, logged,
    /// when the message carries another number of fds or <paramref name="map"/> refuses (IOException, ArgumentException);
    /// the fd is closed in every case (a mapping keeps what it needs).</summary>
    private T? MapSingleFd<T>(ReceivedMessage message, Func<OwnedFd, T> map) where T : class
    {
        if (message.FdCount != 1)
        {
            _log.LogError("{Device}: {Request} with {Fds} descriptors", _device.Name, message.Header.Request, message.FdCount);
            return null;
        }
        try
        {
            using var fd = message.TakeFd(0);
            return map(fd);
        }
        catch (Exception e) when (e is IOException or ArgumentException)
        {
            _log.LogError("{Device}: {Request} refused: {Error}", _device.Name, message.Header.Request, e.Message);
            return null;
        }
    }

    private bool RemoveMemoryRegion(ReceivedMessage message)
    {
        var description = SingleRegionPayload.Read(message.Payload) ?? throw new VhostUserProtocolException("REM_MEM_REG: short payload");
        var match = _regions.FirstOrDefault(r => r.GuestPhysAddr == description.GuestPhysAddr && r.Size == description.Size && r.UserAddr == description.UserAddr);
        if (match is null) return false;
        ReplaceMemory(_regions.Where(r => r != match).ToList());
        _log.LogInformation("{Device}: memory region removed: guest 0x{Gpa:x}, {Bytes} bytes ({Regions} region(s))", _device.Name, match.GuestPhysAddr,
            match.Size, _regions.Count);
        return true;
    }

    private static bool RegionsAreDisjoint(List<GuestRegion> regions)
    {
        for (int i = 0; i < regions.Count; i++)
            for (int j = i + 1; j < regions.Count; j++)
            {
                var a = regions[i];
                var b = regions[j];
                if (a.GuestPhysAddr < b.GuestPhysAddr + b.Size && b.GuestPhysAddr < a.GuestPhysAddr + a.Size) return false;
                if (a.UserAddr < b.UserAddr + b.Size && b.UserAddr < a.UserAddr + a.Size) return false;
            }
        return true;
    }

    /// <summary>Swaps the memory map: running queues are stopped (drained) first, unmapped regions released
    /// only after no queue can use them, and the queues restarted on the new map.</summary>
    private void ReplaceMemory(List<GuestRegion> regions)
    {
        var running = Enumerable.Range(0, _vrings.Length).Where(i => _vrings[i].Running is not null).ToList();
        foreach (int q in running) StopQueue(q);
        if (!_keepMappings)
            foreach (var old in _regions.Except(regions)) old.Dispose();
        _regions.Clear();
        _regions.AddRange(regions);
        _memory = new GuestMemory(_regions);
        foreach (int q in running) Reconcile(q);
    }

    // ---- vrings ----

    private VringSetup? Vring(uint index, VhostUserRequest request)
    {
        if (index < _vrings.Length) return _vrings[index];
        _log.LogError("{Device}: {Request} for queue {Index}, but the device has {Count}", _device.Name, request, index, _vrings.Length);
        return null;
    }

    private bool SetVringNum(ReceivedMessage message)
    {
        RequireLength(message, VringState.Length);
        var state = VringState.Read(message.Payload);
        var vring = Vring(state.Index, message.Header.Request);
        if (vring is null || vring.Running is not null) return false;
        if (!SplitRingLayout.IsValidSize(state.Num))
        {
            _log.LogError("{Device}: queue {Index}: invalid size {Num}", _device.Name, state.Index, state.Num);
            return false;
        }
        vring.Num = state.Num;
        return true;
    }

    private bool SetVringBase(ReceivedMessage message)
    {
        RequireLength(message, VringState.Length);
        var state = VringState.Read(message.Payload);
        var vring = Vring(state.Index, message.Header.Request);
        if (vring is null || vring.Running is not null || (!PackedNegotiated && state.Num > ushort.MaxValue)) return false;
        vring.Base = state.Num;
        return true;
    }

    private bool SetVringAddr(ReceivedMessage message)
    {
        RequireLength(message, VringAddress.Length);
        var address = VringAddress.Read(message.Payload);
        var vring = Vring(address.Index, message.Header.Request);
        if (vring is null) return false;
        if ((address.Flags & VringAddress.LogFlag) != 0 && address.LogGuestAddr > ulong.MaxValue - SplitRingLayout.UsedRingBytes(SplitRingLayout.MaxQueueSize))
        {
            _log.LogError("{Device}: queue {Index}: log_guest_addr 0x{Address:x} wraps the address space", _device.Name, address.Index, address.LogGuestAddr);
            return false;
        }
        if (vring.Running is not null) StopQueue((int)address.Index);
        vring.Address = address;
        return Reconcile((int)address.Index);
    }

    /// <summary>Reads the queue index and takes the fd of SET_VRING_KICK/CALL/ERR (null with the no-fd bit).</summary>
    private (VringSetup? Vring, int Index, OwnedFd? Fd, bool Valid) TakeVringFd(ReceivedMessage message)
    {
        ulong payload = ReadU64(message);
        int index = (int)(payload & VringFdPayload.IndexMask);
        bool noFd = (payload & VringFdPayload.NoFdFlag) != 0;
        var vring = Vring((uint)index, message.Header.Request);
        if (noFd != (message.FdCount == 0) || message.FdCount > 1)
        {
            _log.LogError("{Device}: {Request} for queue {Index}: no-fd bit {NoFd} but {Fds} descriptors", _device.Name, message.Header.Request, index, noFd, message.FdCount);
            return (vring, index, null, false);
        }
        var fd = noFd ? null : message.TakeFd(0);
        if (vring is null)
        {
            fd?.Dispose();
            return (null, index, null, false);
        }
        return (vring, index, fd, true);
    }

    private bool SetVringKick(ReceivedMessage message)
    {
        var (vring, index, fd, valid) = TakeVringFd(message);
        if (!valid || vring is null) return false;
        if (vring.Running is not null) StopQueue(index);
        if (fd is not null) EventFd.SetNonBlocking(fd.Fd);
        VringSetup.Replace(ref vring.Kick, fd);
        vring.Started = true;
        return Reconcile(index);
    }

    private bool SetVringCall(ReceivedMessage message)
    {
        var (vring, _, fd, valid) = TakeVringFd(message);
        if (!valid || vring is null) return false;
        // MSI-X mask/unmask swaps the call fd while the queue runs: switch it on the reactor, then close the old.
        var old = vring.Call;
        vring.Call = fd;
        if (vring.Running is { } running && vring.Reactor is { } reactor)
        {
            int newFd = fd?.Fd ?? -1;
            reactor.Invoke(() => running.SetCallFd(newFd));
        }
        old?.Dispose();
        return true;
    }

    private bool SetVringErr(ReceivedMessage message)
    {
        var (vring, _, fd, valid) = TakeVringFd(message);
        if (!valid || vring is null) return false;
        VringSetup.Replace(ref vring.Err, fd);
        return true;
    }

    private bool SetVringEnable(ReceivedMessage message)
    {
        RequireLength(message, VringState.Length);
        var state = VringState.Read(message.Payload);
        var vring = Vring(state.Index, message.Header.Request);
        if (vring is null || state.Num > 1) return false;
        vring.Enabled = state.Num == 1;
        return Reconcile((int)state.Index);
    }

    private bool GetVringBase(ReceivedMessage message)
    {
        RequireLength(message, VringState.Length);
        var state = VringState.Read(message.Payload);
        var vring = Vring(state.Index, message.Header.Request)
            ?? throw new VhostUserProtocolException($"GET_VRING_BASE for missing queue {state.Index}");
        // The reply must follow the stop: everything taken from the ring has completed by then.
        StopQueue((int)state.Index);
        vring.Started = false;
        VringSetup.Replace(ref vring.Kick, null);
        Span<byte> reply = stackalloc byte[VringState.Length];
        new VringState(state.Index, vring.Base).Write(reply);
        _connection.Reply(VhostUserRequest.GetVringBase, reply);
        return true;
    }

    /// <summary>Starts or stops queue <paramref name="index"/> so that it runs exactly when the frontend has
    /// made it runnable. False when it should run but cannot (rings outside guest memory).</summary>
    private bool Reconcile(int index)
    {
        var vring = _vrings[index];
        bool enabled = vring.Enabled || !ProtocolFeaturesAcked;
        bool runnable = vring.Started && enabled && vring.Address is not null && vring.Num != 0 && _memory.RegionCount > 0;
        if (!runnable)
        {
            if (vring.Running is not null) StopQueue(index);
            return true;
        }
        if (vring.Running is not null) return true;
        return StartQueue(index);
    }

    /// <summary>VIRTIO_F_RING_PACKED was acked: every queue is a packed ring.</summary>
    private bool PackedNegotiated => (_ackedFeatures & VirtioFeatures.Bit(VirtioFeatures.RingPacked)) != 0;

    /// <summary>The ring the negotiated features ask for, at the addresses and base the frontend set, under inflight
    /// tracking when an area is set; null (logged) when it cannot run.</summary>
    private IVirtqueue? CreateRing(int index, VringSetup vring)
    {
        var address = vring.Address!.Value;
        bool eventIdx = (_ackedFeatures & VirtioFeatures.Bit(VirtioFeatures.RingEventIdx)) != 0;
        IVirtqueue? ring = PackedNegotiated
            ? PackedRing.Create(_memory, address.DescUserAddr, address.AvailUserAddr, address.UsedUserAddr, vring.Num, vring.Base, eventIdx)
            : SplitRing.Create(_memory, address.DescUserAddr, address.AvailUserAddr, address.UsedUserAddr, vring.Num, (ushort)vring.Base, eventIdx);
        if (ring is null)
        {
            _log.LogError("{Device}: queue {Index}: ring addresses lie outside guest memory or are misaligned, or base 0x{Base:x} does not fit",
                _device.Name, index, vring.Base);
            return null;
        }
        if (_inflight is not null && !TrackInflight(index, ring)) return null;
        return ring;
    }

    private bool StartQueue(int index)
    {
        var vring = _vrings[index];
        var ring = CreateRing(index, vring);
        if (ring is null) return false;
        var reactor = _reactors.ForQueue(_deviceOffset, index);
        LogRingWrites(ring, vring, _dirtyLog);
        var start = new QueueStartInfo(index, ring, _memory, _ackedFeatures, vring.KickFd, vring.CallFd, reactor.Io, LogAllAcked ? _dirtyLog : null);
        IRunningQueue? queue = null;
        // Created and attached on the reactor thread: the queue's backend channel belongs to that thread's I/O engine.
        reactor.Invoke(() =>
        {
            queue = _device.CreateQueue(start);
            reactor.Attach(queue);
        });
        vring.Running = queue!;
        vring.Reactor = reactor;
        vring.Ring = ring;
        _log.LogDebug("{Device}: queue {Index} started on reactor {Reactor} (size {Num}, base {Base})", _device.Name, index, reactor.Id, vring.Num, vring.Base);
        return true;
    }

    /// <summary>
    /// Stops a running queue and takes it off its reactor. When it stops, the reactor neither polls it nor reads its
    /// kick fd nor signals its call fd any more, so the caller may close them. Waits up to the drain timeout for the
    /// requests in flight; past it the queue is abandoned: retired from its reactor (disposed there once its
    /// backend has returned everything) and this session's guest memory kept mapped for good.
    /// </summary>
    private void StopQueue(int index)
    {
        var vring = _vrings[index];
        if (vring.Running is not { } queue || vring.Reactor is not { } reactor) return;
        using var drained = new ManualResetEventSlim();
        reactor.Invoke(() => queue.BeginStop(drained.Set));
        bool abandoned = false;
        if (!drained.Wait(_options.DrainTimeout))
        {
            // Decided on the reactor, where the queue runs: it may have drained since the wait ended.
            reactor.Invoke(() =>
            {
                if (drained.IsSet) return;
                abandoned = true;
                queue.AbandonInFlight();
                reactor.Retire(queue);
            });
        }
        if (abandoned)
        {
            // Requests the backend never finished may still write into guest memory: keep every mapping alive rather
            // than free memory the kernel may still write into.
            _keepMappings = true;
            _log.LogError("{Device}: queue {Index}: in-flight requests did not complete within {Timeout}; the queue is abandoned and this session's guest memory stays mapped",
                _device.Name, index, _options.DrainTimeout);
        }
        else
        {
            reactor.Invoke(() =>
            {
                reactor.Detach(queue);
                queue.Dispose();
            });
        }
        vring.Base = queue.VringBase;
        _log.LogDebug("{Device}: queue {Index} stopped at avail index {Base}", _device.Name, index, vring.Base);
        if (queue.BrokenReason is { } reason && !abandoned) _log.LogWarning("{Device}: queue {Index} had stopped processing: {Reason}", _device.Name, index, reason);
        vring.Running = null;
        vring.Reactor = null;
        vring.Ring = null;
    }

    // ---- config space ----

    private bool GetConfig(ReceivedMessage message)
    {
        RequireLength(message, ConfigHeader.Length);
        var header = ConfigHeader.Read(message.Payload);
        bool valid = header.Size <= ConfigHeader.MaxConfigSize && header.Offset <= ConfigHeader.MaxConfigSize - header.Size;
        if (!valid)
        {
            // A zero-size config payload tells the frontend the request failed.
            Span<byte> failure = stackalloc byte[ConfigHeader.Length];
            new ConfigHeader(header.Offset, 0, header.Flags).Write(failure);
            _connection.Reply(VhostUserRequest.GetConfig, failure);
            return false;
        }
        Span<byte> reply = stackalloc byte[ConfigHeader.Length + (int)header.Size];
        header.Write(reply);
        _device.ReadConfig(header.Offset, reply[ConfigHeader.Length..]);
        _connection.Reply(VhostUserRequest.GetConfig, reply);
        return true;
    }

    private bool SetConfig(ReceivedMessage message)
    {
        RequireLength(message, ConfigHeader.Length);
        var header = ConfigHeader.Read(message.Payload);
        if (header.Size > message.Payload.Length - ConfigHeader.Length) return false;
        return _device.WriteConfig(header.Offset, message.PayloadSpan.Slice(ConfigHeader.Length, (int)header.Size));
    }

    // ---- status ----

    /// <summary>
    /// What this session negotiated and runs, for status reports (export_list). Any thread: values are read without
    /// stopping anything, so a queue starting or stopping meanwhile may show either way.
    /// </summary>
    public SessionStatus Status()
    {
        var queues = new List<QueueStatus>();
        for (int i = 0; i < _vrings.Length; i++)
        {
            var vring = _vrings[i];
            var running = Volatile.Read(ref vring.Running);
            var reactor = Volatile.Read(ref vring.Reactor);
            queues.Add(new QueueStatus(i, vring.Num, running is not null, vring.Enabled, reactor?.Id, running?.InFlight ?? 0,
                running?.BrokenReason));
        }
        // 64-bit fields written by the session thread: a plain read is atomic on the 64-bit platforms we run on.
        return new SessionStatus(_ackedFeatures, _ackedProtocol, _backendChannel.IsOpen, queues);
    }

    // ---- backend request channel ----

    private bool SetBackendReqFd(ReceivedMessage message)
    {
        if (message.FdCount != 1 || (_ackedProtocol & ProtocolFeatures.BackendReq) == 0)
        {
            _log.LogError("{Device}: SET_BACKEND_REQ_FD with {Fds} descriptors, BACKEND_REQ {Acked}", _device.Name, message.FdCount,
                (_ackedProtocol & ProtocolFeatures.BackendReq) != 0 ? "negotiated" : "not negotiated");
            return false;
        }
        _backendChannel.Replace(message.TakeFd(0));
        return true;
    }

    /// <summary>
    /// Tells the frontend that the config space changed (VHOST_USER_BACKEND_CONFIG_CHANGE_MSG on the backend request
    /// channel; QEMU then re-reads it with GET_CONFIG and notifies the guest). Any thread. False when the frontend
    /// negotiated no CONFIG or BACKEND_REQ or sent no channel: it then learns the new config only when it next reads it.
    /// </summary>
    public bool NotifyConfigChanged()
    {
        if ((_ackedProtocol & ProtocolFeatures.Config) == 0) return false;
        return _backendChannel.SendConfigChange();
    }

    // ---- inflight tracking (reconnect after a backend restart) ----

    /// <summary>GET_INFLIGHT_FD: a fresh zeroed area for the frontend to keep; a reply with mmap_size 0 and no fd
    /// tells the frontend there is none (QEMU then runs without).</summary>
    private bool GetInflightFd(ReceivedMessage message)
    {
        RequireLength(message, InflightDescription.MinLength);
        var asked = InflightDescription.Read(message.Payload);
        Span<byte> reply = stackalloc byte[InflightDescription.Length];
        try
        {
            using var fd = InflightRegion.Create(asked.NumQueues, asked.QueueSize, out var created);
            created.Write(reply);
            _connection.Send(VhostUserRequest.GetInflightFd, MessageHeader.ReplyFlag, reply, [fd.Fd]);
            _log.LogInformation("{Device}: inflight area created for {Queues} queues of {Size}, {Bytes} bytes", _device.Name, asked.NumQueues, asked.QueueSize, created.MmapSize);
            return true;
        }
        catch (Exception e) when (e is ArgumentException or IOException)
        {
            _log.LogError("{Device}: GET_INFLIGHT_FD refused: {Error}", _device.Name, e.Message);
            new InflightDescription(0, 0, asked.NumQueues, asked.QueueSize).Write(reply);
            _connection.Reply(VhostUserRequest.GetInflightFd, reply);
            return false;
        }
    }

    /// <summary>SET_INFLIGHT_FD: maps the area the frontend kept (on every start, before the rings are set up).</summary>
    private bool SetInflightFd(ReceivedMessage message)
    {
        RequireLength(message, InflightDescription.MinLength);
        var description = InflightDescription.Read(message.Payload);
        if (_vrings.Any(v => v.Running is not null))
        {
            _log.LogError("{Device}: SET_INFLIGHT_FD while queues run: refused", _device.Name);
            return false;
        }
        var region = MapSingleFd(message, fd => InflightRegion.Map(description, fd));
        if (region is null) return false;
        if (!_keepMappings) _inflight?.Dispose();
        _inflight = region;
        _log.LogInformation("{Device}: inflight area of {Queues} queues of {Size} mapped", _device.Name, description.NumQueues, description.QueueSize);
        return true;
    }

    /// <summary>Puts a ring about to start under inflight tracking: repairs its region and queues what was in
    /// flight when the previous backend stopped. False (logged) when the region is unusable: the queue stays stopped.</summary>
    private bool TrackInflight(int index, IVirtqueue ring)
    {
        string? error;
        int recovered = 0;
        if (ring is PackedRing packed)
        {
            var tracker = _inflight!.PackedQueue(index, ring.Size, out error);
            error ??= packed.TrackInflight(tracker!);
            recovered = tracker?.RecoveredInflight ?? 0;
        }
        else
        {
            var tracker = _inflight!.SplitQueue(index, ring.Size, out error);
            error ??= ((SplitRing)ring).TrackInflight(tracker!);
            recovered = tracker?.RecoveredInflight ?? 0;
        }
        if (error is not null)
        {
            _log.LogError("{Device}: queue {Index}: inflight area refused, queue not started: {Error}", _device.Name, index, error);
            return false;
        }
        var vring = _vrings[index];
        if (recovered > 0 || ring.VringBase != vring.Base)
            _log.LogInformation("{Device}: queue {Index}: resubmitting {Count} in-flight request(s); vring base 0x{Avail:x} (frontend said 0x{Base:x})",
                _device.Name, index, recovered, ring.VringBase, vring.Base);
        return true;
    }

    // ---- dirty page logging (live migration) ----

    private bool LogAllAcked => (_ackedFeatures & VirtioFeatures.Bit(VirtioFeatures.LogAll)) != 0;
    private bool LogShmfdAcked => (_ackedProtocol & ProtocolFeatures.LogShmfd) != 0;

    private void RestartRunningQueues()
    {
        for (int i = 0; i < _vrings.Length; i++)
        {
            if (_vrings[i].Running is null) continue;
            StopQueue(i);
            Reconcile(i);
        }
    }

    /// <summary>
    /// SET_LOG_BASE (LOG_SHMFD): maps the log {u64 mmap_size, u64 mmap_offset} of the attached fd and switches every
    /// running queue that logs to it on its reactor before the old log is released, so no reactor can write into a
    /// log the frontend already freed. With LOG_SHMFD QEMU 7.2 waits for a reply to this message whatever the
    /// NEED_REPLY flag (it checks only the request code and reads the payload the header announces): the reply is a
    /// u64, 0 when the log is mapped, 1 when refused, and it is the only reply (no REPLY_ACK on top).
    /// </summary>
    private bool SetLogBase(ReceivedMessage message)
    {
        bool ok = MapLog(message);
        if (LogShmfdAcked) _connection.ReplyU64(VhostUserRequest.SetLogBase, ok ? 0UL : 1UL);
        return ok;
    }

    private bool MapLog(ReceivedMessage message)
    {
        if (!LogShmfdAcked || message.Payload.Length < LogDescription.Length)
        {
            _log.LogError("{Device}: SET_LOG_BASE with {Bytes} payload bytes, LOG_SHMFD {Acked}: refused", _device.Name, message.Payload.Length,
                LogShmfdAcked ? "negotiated" : "not negotiated");
            return false;
        }
        var description = LogDescription.Read(message.Payload);
        var log = MapSingleFd(message, fd => DirtyLog.Map(description, fd));
        if (log is null) return false;
        var old = _dirtyLog;
        for (int i = 0; i < _vrings.Length; i++)
        {
            var vring = _vrings[i];
            if (vring.Running is not { } queue || vring.Reactor is not { } reactor || vring.Ring is not { } ring) continue;
            bool dataLogged = LogAllAcked && old is not null;
            reactor.Invoke(() =>
            {
                LogRingWrites(ring, vring, log);
                if (dataLogged) queue.ReplaceDirtyLog(log);
            });
        }
        _dirtyLog = log;
        // Queues started while LOG_ALL was acked but no log was set (LOG_ALL came first) log from now on.
        if (LogAllAcked && old is null) RestartRunningQueues();
        if (!_keepMappings) old?.Dispose();
        _log.LogInformation("{Device}: dirty log of {Bytes} bytes mapped (guest memory up to 0x{Covered:x})", _device.Name, description.MmapSize, log.CoveredBytes);
        return true;
    }

    /// <summary>
    /// With VHOST_VRING_F_LOG on the ring's address, has <paramref name="ring"/> mark its own writes in
    /// <paramref name="log"/>: a split ring's used ring at log_guest_addr, a packed ring's used descriptors (in the
    /// descriptor ring, located through the memory map) and its device event area at log_guest_addr. On the thread that
    /// owns the ring.
    /// </summary>
    private void LogRingWrites(IVirtqueue ring, VringSetup vring, DirtyLog? log)
    {
        if (vring.Address is not { } address || (address.Flags & VringAddress.LogFlag) == 0) return;
        if (ring is SplitRing split) split.LogUsedRing(log, address.LogGuestAddr);
        else if (ring is PackedRing packed && _memory.TryUserToGuest(address.DescUserAddr, out ulong descGuestAddr))
            packed.LogRingWrites(log, descGuestAddr, address.LogGuestAddr);
    }

    /// <summary>SET_LOG_FD: an eventfd for telling the frontend the log changed; kept, never needed with a shared log.</summary>
    private bool SetLogFd(ReceivedMessage message)
    {
        if (message.FdCount != 1)
        {
            _log.LogError("{Device}: SET_LOG_FD with {Fds} descriptors", _device.Name, message.FdCount);
            return false;
        }
        VringSetup.Replace(ref _logFd, message.TakeFd(0));
        return true;
    }

    // ---- lifecycle ----

    private bool ResetDevice()
    {
        StopAll();
        foreach (var vring in _vrings) vring.Clear();
        _ackedFeatures = 0;
        _device.Reset();
        return true;
    }

    private void StopAll()
    {
        for (int i = 0; i < _vrings.Length; i++) StopQueue(i);
    }

    /// <summary>Releases everything the frontend gave us: queues are drained and detached first, then fds
    /// closed and memory unmapped.</summary>
    public void Dispose()
    {
        StopAll();
        foreach (var vring in _vrings) vring.Dispose();
        if (!_keepMappings)
            foreach (var region in _regions) region.Dispose();
        _regions.Clear();
        if (!_keepMappings) _inflight?.Dispose();
        _inflight = null;
        if (!_keepMappings) _dirtyLog?.Dispose();
        _dirtyLog = null;
        VringSetup.Replace(ref _logFd, null);
        _memory = GuestMemory.Empty;
        _backendChannel.Dispose();
        _device.Reset();
    }
}
