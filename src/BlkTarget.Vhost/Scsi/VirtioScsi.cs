namespace BlkTarget.Vhost.Scsi;

/// <summary>virtio-scsi constants (virtio 1.2, 5.6).</summary>
public static class VirtioScsi
{
    public const int FeatureInOut = 0;
    public const int FeatureHotplug = 1;
    public const int FeatureChange = 2;
    public const int FeatureT10Pi = 3;

    public const int ControlQueue = 0;
    public const int EventQueue = 1;
    /// <summary>Index of the first request queue.</summary>
    public const int FirstRequestQueue = 2;

    public const int DefaultCdbSize = 32;
    public const int DefaultSenseSize = 96;
    /// <summary>virtio_scsi_cmd_req without the CDB: lun[8], u64 tag, u8 task_attr, u8 prio, u8 crn.</summary>
    public const int RequestHeaderLength = 19;
    /// <summary>virtio_scsi_cmd_resp without the sense: u32 sense_len, u32 resid, u16 status_qualifier, u8 status, u8 response.</summary>
    public const int ResponseHeaderLength = 12;
    public const int MaxCdbSize = 256;
    public const int MaxSenseSize = 252;
    /// <summary>sizeof(struct virtio_scsi_event).</summary>
    public const int EventInfoSize = 16;

    // event types and reasons (virtio 1.2 5.6.6.3)
    public const uint EventTransportReset = 1;
    public const uint EventParamChange = 3;
    /// <summary>Or-ed into the event type when the device had to drop events for want of buffers: the driver
    /// then rescans the whole bus.</summary>
    public const uint EventsMissed = 0x8000_0000;
    public const uint ResetReasonRescan = 1;
    public const uint ResetReasonRemoved = 2;

    // response codes
    public const byte Ok = 0;
    public const byte FunctionComplete = 0;
    public const byte Overrun = 1;
    public const byte Aborted = 2;
    public const byte BadTarget = 3;
    public const byte Reset = 4;
    public const byte Busy = 5;
    public const byte TransportFailure = 6;
    public const byte TargetFailure = 7;
    public const byte NexusFailure = 8;
    public const byte Failure = 9;
    public const byte FunctionSucceeded = 10;
    public const byte FunctionRejected = 11;
    public const byte IncorrectLun = 12;

    // control queue request types
    public const uint TypeTmf = 0;
    public const uint TypeAnQuery = 1;
    public const uint TypeAnSubscribe = 2;

    // TMF subtypes
    public const uint TmfAbortTask = 0;
    public const uint TmfAbortTaskSet = 1;
    public const uint TmfClearAca = 2;
    public const uint TmfClearTaskSet = 3;
    public const uint TmfITNexusReset = 4;
    public const uint TmfLogicalUnitReset = 5;
    public const uint TmfQueryTask = 6;
    public const uint TmfQueryTaskSet = 7;

    /// <summary>virtio_scsi_ctrl_tmf_req: u32 type, u32 subtype, u8 lun[8], u64 tag.</summary>
    public const int TmfRequestLength = 24;
    /// <summary>virtio_scsi_ctrl_an_req: u32 type, u8 lun[8], u32 event_requested.</summary>
    public const int AnRequestLength = 16;
    /// <summary>virtio_scsi_ctrl_an_resp: u32 event_actual, u8 response.</summary>
    public const int AnResponseLength = 5;
}

/// <summary>Where a virtio-scsi 8-byte LUN field points: lun[0] = 1, lun[1] = target, lun[2..3] = LUN
/// (single-level, peripheral or flat addressing), lun[4..7] = 0.</summary>
public readonly record struct ScsiAddress(bool Valid, byte Target, ushort Lun)
{
    public static ScsiAddress Parse(ReadOnlySpan<byte> lun)
    {
        if (lun.Length < 8 || lun[0] != 1) return default;
        int method = lun[2] >> 6;
        // Peripheral addressing (method 0) with bus 0, or flat addressing (method 1).
        if (method > 1 || (method == 0 && lun[2] != 0)) return new ScsiAddress(true, lun[1], ushort.MaxValue);
        if (lun[4] != 0 || lun[5] != 0 || lun[6] != 0 || lun[7] != 0) return new ScsiAddress(true, lun[1], ushort.MaxValue);
        return new ScsiAddress(true, lun[1], (ushort)(((lun[2] & 0x3f) << 8) | lun[3]));
    }

    /// <summary>Writes the REPORT LUNS / virtio encoding of a LUN number (bytes 0-1 of an 8-byte LUN).</summary>
    public static void EncodeLun(int lun, Span<byte> destination)
    {
        destination[..8].Clear();
        if (lun < 256)
        {
            destination[1] = (byte)lun;
        }
        else
        {
            destination[0] = (byte)(0x40 | (lun >> 8));
            destination[1] = (byte)lun;
        }
    }
}
