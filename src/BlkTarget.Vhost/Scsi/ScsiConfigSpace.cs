using System.Buffers.Binary;

namespace BlkTarget.Vhost.Scsi;

/// <summary>
/// struct virtio_scsi_config (virtio 1.2 5.6.4): num_queues, seg_max, max_sectors, cmd_per_lun, event_info_size,
/// sense_size, cdb_size (the two the driver may write), max_channel, max_target, max_lun.
/// </summary>
public sealed class ScsiConfigSpace
{
    public const int Size = 36;
    public const int OffNumQueues = 0;
    public const int OffSegMax = 4;
    public const int OffMaxSectors = 8;
    public const int OffCmdPerLun = 12;
    public const int OffEventInfoSize = 16;
    public const int OffSenseSize = 20;
    public const int OffCdbSize = 24;
    public const int OffMaxChannel = 28;
    public const int OffMaxTarget = 30;
    public const int OffMaxLun = 32;

    private readonly byte[] _bytes = new byte[Size];
    private readonly object _lock = new();
    private volatile int _senseSize = VirtioScsi.DefaultSenseSize;
    private volatile int _cdbSize = VirtioScsi.DefaultCdbSize;

    public ScsiConfigSpace(ScsiOptions options, int maxTarget, int maxLun)
    {
        var b = _bytes.AsSpan();
        BinaryPrimitives.WriteUInt32LittleEndian(b[OffNumQueues..], (uint)options.RequestQueues);
        BinaryPrimitives.WriteUInt32LittleEndian(b[OffSegMax..], options.SegMax);
        BinaryPrimitives.WriteUInt32LittleEndian(b[OffMaxSectors..], options.MaxSectors);
        BinaryPrimitives.WriteUInt32LittleEndian(b[OffCmdPerLun..], options.CmdPerLun);
        BinaryPrimitives.WriteUInt32LittleEndian(b[OffEventInfoSize..], VirtioScsi.EventInfoSize);
        BinaryPrimitives.WriteUInt16LittleEndian(b[OffMaxChannel..], 0);
        BinaryPrimitives.WriteUInt16LittleEndian(b[OffMaxTarget..], (ushort)maxTarget);
        BinaryPrimitives.WriteUInt32LittleEndian(b[OffMaxLun..], (uint)maxLun);
        Store();
    }

    /// <summary>Bytes of sense data the driver's response buffers hold.</summary>
    public int SenseSize => _senseSize;
    /// <summary>Bytes of CDB in the driver's requests.</summary>
    public int CdbSize => _cdbSize;

    private void Store()
    {
        BinaryPrimitives.WriteUInt32LittleEndian(_bytes.AsSpan(OffSenseSize), (uint)_senseSize);
        BinaryPrimitives.WriteUInt32LittleEndian(_bytes.AsSpan(OffCdbSize), (uint)_cdbSize);
    }

    public void Read(uint offset, Span<byte> destination)
    {
        destination.Clear();
        if (offset >= Size) return;
        lock (_lock)
        {
            var available = _bytes.AsSpan((int)offset);
            available[..Math.Min(available.Length, destination.Length)].CopyTo(destination);
        }
    }

    /// <summary>Applies a guest write of sense_size and/or cdb_size (whole 32-bit fields only); anything else,
    /// or a size we cannot honour, is refused.</summary>
    public bool Write(uint offset, ReadOnlySpan<byte> data)
    {
        if (data.Length == 0 || data.Length % 4 != 0 || offset < OffSenseSize || offset + (uint)data.Length > OffCdbSize + 4) return false;
        int sense = _senseSize, cdb = _cdbSize;
        for (int i = 0; i < data.Length; i += 4)
        {
            uint value = BinaryPrimitives.ReadUInt32LittleEndian(data[i..]);
            if (offset + i == OffSenseSize)
            {
                if (value > VirtioScsi.MaxSenseSize) return false;
                sense = (int)value;
            }
            else
            {
                if (value is < 6 or > VirtioScsi.MaxCdbSize) return false;
                cdb = (int)value;
            }
        }
        lock (_lock)
        {
            _senseSize = sense;
            _cdbSize = cdb;
            Store();
        }
        return true;
    }

    /// <summary>Back to the defaults (device reset).</summary>
    public void Reset()
    {
        lock (_lock)
        {
            _senseSize = VirtioScsi.DefaultSenseSize;
            _cdbSize = VirtioScsi.DefaultCdbSize;
            Store();
        }
    }
}
