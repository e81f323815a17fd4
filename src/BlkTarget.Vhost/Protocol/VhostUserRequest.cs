namespace BlkTarget.Vhost.Protocol;

/// <summary>Frontend-to-backend request codes of the vhost-user protocol (QEMU docs/interop/vhost-user.rst).</summary>
public enum VhostUserRequest : uint
{
    None = 0,
    GetFeatures = 1,
    SetFeatures = 2,
    SetOwner = 3,
    ResetOwner = 4,
    SetMemTable = 5,
    SetLogBase = 6,
    SetLogFd = 7,
    SetVringNum = 8,
    SetVringAddr = 9,
    SetVringBase = 10,
    GetVringBase = 11,
    SetVringKick = 12,
    SetVringCall = 13,
    SetVringErr = 14,
    GetProtocolFeatures = 15,
    SetProtocolFeatures = 16,
    GetQueueNum = 17,
    SetVringEnable = 18,
    SendRarp = 19,
    NetSetMtu = 20,
    SetBackendReqFd = 21,
    IotlbMsg = 22,
    SetVringEndian = 23,
    GetConfig = 24,
    SetConfig = 25,
    CreateCryptoSession = 26,
    CloseCryptoSession = 27,
    PostcopyAdvise = 28,
    PostcopyListen = 29,
    PostcopyEnd = 30,
    GetInflightFd = 31,
    SetInflightFd = 32,
    GpuSetSocket = 33,
    ResetDevice = 34,
    VringKick = 35,
    GetMaxMemSlots = 36,
    AddMemReg = 37,
    RemMemReg = 38,
    SetStatus = 39,
    GetStatus = 40,
}

/// <summary>Backend-to-frontend request codes, sent on the backend request channel (SET_BACKEND_REQ_FD; the
/// specification's "back-end message types").</summary>
public enum VhostUserBackendRequest : uint
{
    IotlbMsg = 1,
    /// <summary>The device's config space changed; the frontend re-reads it (GET_CONFIG) and tells the guest. No payload.</summary>
    ConfigChangeMsg = 2,
    VringHostNotifierMsg = 3,
}
