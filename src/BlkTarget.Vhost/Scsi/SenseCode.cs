namespace BlkTarget.Vhost.Scsi;

/// <summary>A sense key with its additional sense code and qualifier: what a CHECK CONDITION reports.</summary>
public readonly record struct SenseCode(byte Key, byte Asc, byte Ascq)
{
    public static readonly SenseCode None = new(SenseKey.NoSense, 0x00, 0x00);
    public static readonly SenseCode InvalidOpcode = new(SenseKey.IllegalRequest, 0x20, 0x00);
    public static readonly SenseCode LbaOutOfRange = new(SenseKey.IllegalRequest, 0x21, 0x00);
    public static readonly SenseCode InvalidFieldInCdb = new(SenseKey.IllegalRequest, 0x24, 0x00);
    public static readonly SenseCode LunNotSupported = new(SenseKey.IllegalRequest, 0x25, 0x00);
    public static readonly SenseCode InvalidFieldInParameterList = new(SenseKey.IllegalRequest, 0x26, 0x00);
    /// <summary>ILLEGAL REQUEST, INVALID FIELD IN COMMAND INFORMATION UNIT (SPC-4 table 28): the transfer the transport
    /// carried (the Data-Out buffer) disagrees with the length the CDB implies, where that matters (COMPARE AND WRITE).</summary>
    public static readonly SenseCode InvalidFieldInCommandInformationUnit = new(SenseKey.IllegalRequest, 0x0e, 0x03);
    public static readonly SenseCode ParameterListLengthError = new(SenseKey.IllegalRequest, 0x1a, 0x00);
    public static readonly SenseCode SavingParametersNotSupported = new(SenseKey.IllegalRequest, 0x39, 0x00);
    /// <summary>NOT READY, LOGICAL UNIT NOT READY, INITIALIZING COMMAND REQUIRED: stopped by START STOP UNIT.</summary>
    public static readonly SenseCode NotReadyInitializingCommandRequired = new(SenseKey.NotReady, 0x04, 0x02);
    /// <summary>UNIT ATTENTION, CAPACITY DATA HAS CHANGED (SBC-3 4.10): the LUN grew.</summary>
    public static readonly SenseCode CapacityDataHasChanged = new(SenseKey.UnitAttention, 0x2a, 0x09);
    /// <summary>UNIT ATTENTION, REPORTED LUNS DATA HAS CHANGED (SPC-4 6.33): a LUN was added or removed.</summary>
    public static readonly SenseCode ReportedLunsDataHasChanged = new(SenseKey.UnitAttention, 0x3f, 0x0e);
    public static readonly SenseCode WriteProtected = new(SenseKey.DataProtect, 0x27, 0x00);
    public static readonly SenseCode SpaceAllocationFailed = new(SenseKey.DataProtect, 0x27, 0x07);
    public static readonly SenseCode UnrecoveredReadError = new(SenseKey.MediumError, 0x11, 0x00);
    public static readonly SenseCode WriteError = new(SenseKey.MediumError, 0x0c, 0x00);
    public static readonly SenseCode MediumErrorGeneric = new(SenseKey.MediumError, 0x00, 0x00);
    /// <summary>ILLEGAL REQUEST, INVALID RELEASE OF PERSISTENT RESERVATION (SPC-4 5.14.11.2.3: TYPE or SCOPE differ).</summary>
    public static readonly SenseCode InvalidReleaseOfPersistentReservation = new(SenseKey.IllegalRequest, 0x26, 0x04);
    /// <summary>ILLEGAL REQUEST, INSUFFICIENT REGISTRATION RESOURCES (SPC-4 5.14.7).</summary>
    public static readonly SenseCode InsufficientRegistrationResources = new(SenseKey.IllegalRequest, 0x55, 0x04);
    /// <summary>UNIT ATTENTION, RESERVATIONS PREEMPTED (CLEAR by another I_T nexus).</summary>
    public static readonly SenseCode ReservationsPreempted = new(SenseKey.UnitAttention, 0x2a, 0x03);
    /// <summary>UNIT ATTENTION, RESERVATIONS RELEASED (a registrants-only or all-registrants reservation released, or
    /// a reservation's type changed by a PREEMPT).</summary>
    public static readonly SenseCode ReservationsReleased = new(SenseKey.UnitAttention, 0x2a, 0x04);
    /// <summary>UNIT ATTENTION, REGISTRATIONS PREEMPTED (the nexus's registration removed by PREEMPT).</summary>
    public static readonly SenseCode RegistrationsPreempted = new(SenseKey.UnitAttention, 0x2a, 0x05);
    /// <summary>MISCOMPARE, MISCOMPARE DURING VERIFY OPERATION (COMPARE AND WRITE, SBC-3 5.2); INFORMATION holds the
    /// offset of the first differing byte.</summary>
    public static readonly SenseCode MiscompareDuringVerify = new(SenseKey.Miscompare, 0x1d, 0x00);

    /// <summary>The INFORMATION field (fixed format bytes 3-6, with VALID set) when not null: COMPARE AND WRITE's
    /// offset of the first differing byte.</summary>
    public uint? Information { get; init; }

    /// <summary>Length of the fixed-format sense data we build.</summary>
    public const int FixedLength = 18;

    /// <summary>
    /// Writes fixed-format sense data (SPC-4 4.5.3): response code 70h (current error; F0h with VALID and INFORMATION), the sense key, additional
    /// sense length 10, ASC/ASCQ. Returns the bytes written (at most <see cref="FixedLength"/>, fewer if the
    /// destination is shorter).
    /// </summary>
    public int WriteFixed(Span<byte> destination)
    {
        Span<byte> sense = stackalloc byte[FixedLength];
        sense.Clear();
        sense[0] = 0x70;
        if (Information is uint information)
        {
            sense[0] |= 0x80;
            System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(sense[3..], information);
        }
        sense[2] = (byte)(Key & 0x0f);
        sense[7] = FixedLength - 8;
        sense[12] = Asc;
        sense[13] = Ascq;
        int n = Math.Min(destination.Length, FixedLength);
        sense[..n].CopyTo(destination);
        return n;
    }
}
