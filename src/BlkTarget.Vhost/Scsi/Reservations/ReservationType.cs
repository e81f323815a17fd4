namespace BlkTarget.Vhost.Scsi.Reservations;

/// <summary>Persistent reservation TYPE codes (SPC-4 6.15.2, table 208) and what each grants.</summary>
public static class ReservationType
{
    public const byte None = 0x0;
    public const byte WriteExclusive = 0x1;
    public const byte ExclusiveAccess = 0x3;
    public const byte WriteExclusiveRegistrantsOnly = 0x5;
    public const byte ExclusiveAccessRegistrantsOnly = 0x6;
    public const byte WriteExclusiveAllRegistrants = 0x7;
    public const byte ExclusiveAccessAllRegistrants = 0x8;

    public static bool IsValid(byte type) => type is WriteExclusive or ExclusiveAccess or WriteExclusiveRegistrantsOnly
        or ExclusiveAccessRegistrantsOnly or WriteExclusiveAllRegistrants or ExclusiveAccessAllRegistrants;

    /// <summary>All-registrants types: every registered I_T nexus is a reservation holder (SPC-4 5.14.10.1).</summary>
    public static bool IsAllRegistrants(byte type) => type is WriteExclusiveAllRegistrants or ExclusiveAccessAllRegistrants;

    /// <summary>Registrants-only and all-registrants types: a registered I_T nexus has full access (SPC-4 table 43,
    /// "From registered I_T nexus").</summary>
    public static bool RegistrantsHaveAccess(byte type) => type >= WriteExclusiveRegistrantsOnly && IsValid(type);

    /// <summary>Exclusive access types: non-holders may not even read.</summary>
    public static bool IsExclusiveAccess(byte type) => type is ExclusiveAccess or ExclusiveAccessRegistrantsOnly or ExclusiveAccessAllRegistrants;
}

/// <summary>PERSISTENT RESERVE OUT service actions (SPC-4 6.16.2, table 213).</summary>
public static class ReserveOutAction
{
    public const int Register = 0x00;
    public const int Reserve = 0x01;
    public const int Release = 0x02;
    public const int Clear = 0x03;
    public const int Preempt = 0x04;
    public const int PreemptAndAbort = 0x05;
    public const int RegisterAndIgnoreExistingKey = 0x06;
    public const int RegisterAndMove = 0x07;
}

/// <summary>PERSISTENT RESERVE IN service actions (SPC-4 6.15.1, table 200).</summary>
public static class ReserveInAction
{
    public const int ReadKeys = 0x00;
    public const int ReadReservation = 0x01;
    public const int ReportCapabilities = 0x02;
    public const int ReadFullStatus = 0x03;
}
