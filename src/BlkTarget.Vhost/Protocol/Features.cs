namespace BlkTarget.Vhost.Protocol;

/// <summary>Transport-level virtio feature bits and the vhost-user marker bit.</summary>
public static class VirtioFeatures
{
    /// <summary>VHOST_F_LOG_ALL: the backend logs every guest page it writes in the dirty log (live migration).</summary>
    public const int LogAll = 26;
    public const int RingIndirectDesc = 28;
    public const int RingEventIdx = 29;
    /// <summary>VHOST_USER_F_PROTOCOL_FEATURES: not a virtio bit, it says the backend speaks protocol features.</summary>
    public const int VhostUserProtocolFeatures = 30;
    public const int Version1 = 32;
    public const int RingPacked = 34;

    public static ulong Bit(int bit) => 1UL << bit;
}

/// <summary>vhost-user protocol feature bits (GET/SET_PROTOCOL_FEATURES).</summary>
[Flags]
public enum ProtocolFeatures : ulong
{
    None = 0,
    Mq = 1UL << 0,
    LogShmfd = 1UL << 1,
    Rarp = 1UL << 2,
    ReplyAck = 1UL << 3,
    Mtu = 1UL << 4,
    BackendReq = 1UL << 5,
    CrossEndian = 1UL << 6,
    CryptoSession = 1UL << 7,
    Pagefault = 1UL << 8,
    Config = 1UL << 9,
    BackendSendFd = 1UL << 10,
    HostNotifier = 1UL << 11,
    InflightShmfd = 1UL << 12,
    ResetDevice = 1UL << 13,
    InbandNotifications = 1UL << 14,
    ConfigureMemSlots = 1UL << 15,
    Status = 1UL << 16,
}
