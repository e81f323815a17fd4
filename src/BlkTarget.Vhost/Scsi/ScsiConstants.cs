namespace BlkTarget.Vhost.Scsi;

/// <summary>SCSI operation codes we decode (SPC-4, SBC-3).</summary>
public static class ScsiOp
{
    public const byte TestUnitReady = 0x00;
    public const byte RequestSense = 0x03;
    public const byte Read6 = 0x08;
    public const byte Write6 = 0x0a;
    public const byte Inquiry = 0x12;
    public const byte ModeSelect6 = 0x15;
    public const byte ModeSense6 = 0x1a;
    public const byte StartStopUnit = 0x1b;
    public const byte ReadCapacity10 = 0x25;
    public const byte Read10 = 0x28;
    public const byte Write10 = 0x2a;
    public const byte SynchronizeCache10 = 0x35;
    public const byte WriteSame10 = 0x41;
    public const byte Unmap = 0x42;
    public const byte ModeSelect10 = 0x55;
    public const byte ModeSense10 = 0x5a;
    public const byte PersistentReserveIn = 0x5e;
    public const byte PersistentReserveOut = 0x5f;
    public const byte Read16 = 0x88;
    public const byte CompareAndWrite = 0x89;
    public const byte Write16 = 0x8a;
    public const byte SynchronizeCache16 = 0x91;
    public const byte WriteSame16 = 0x93;
    public const byte ServiceActionIn16 = 0x9e;
    public const byte ReportLuns = 0xa0;
    public const byte MaintenanceIn = 0xa3;
    public const byte Read12 = 0xa8;
    public const byte Write12 = 0xaa;

    /// <summary>SERVICE ACTION IN(16) service action of READ CAPACITY(16).</summary>
    public const byte SaReadCapacity16 = 0x10;
    /// <summary>MAINTENANCE IN service action of REPORT SUPPORTED OPERATION CODES.</summary>
    public const byte SaReportSupportedOpcodes = 0x0c;

    /// <summary>CDB length implied by the operation code's group (0 for vendor-specific/reserved groups).</summary>
    public static int CdbLength(byte opcode) => (opcode >> 5) switch
    {
        0 => 6,
        1 or 2 => 10,
        4 => 16,
        5 => 12,
        _ => 0,
    };
}

/// <summary>SCSI status codes (SAM-5).</summary>
public static class ScsiStatus
{
    public const byte Good = 0x00;
    public const byte CheckCondition = 0x02;
    public const byte Busy = 0x08;
    public const byte ReservationConflict = 0x18;
    public const byte TaskSetFull = 0x28;
}

/// <summary>Sense keys (SPC-4 4.5.6).</summary>
public static class SenseKey
{
    public const byte NoSense = 0x0;
    public const byte NotReady = 0x2;
    public const byte MediumError = 0x3;
    public const byte HardwareError = 0x4;
    public const byte IllegalRequest = 0x5;
    public const byte UnitAttention = 0x6;
    public const byte DataProtect = 0x7;
    public const byte AbortedCommand = 0xb;
    public const byte Miscompare = 0xe;
}
