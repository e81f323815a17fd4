using System.Buffers.Binary;

namespace BlkTarget.Vhost.Scsi;

/// <summary>One SCSI target of the device: its LUNs, sorted by number.</summary>
public sealed class ScsiTargetNode(byte id, ScsiLun[] luns)
{
    public byte Id { get; } = id;
    public IReadOnlyList<ScsiLun> Luns { get; } = luns;

    public ScsiLun? Find(ushort lun)
    {
        foreach (var l in luns)
            if (l.Lun == lun) return l;
        return null;
    }

    /// <summary>REPORT LUNS (SPC-4 6.33): SELECT REPORT 00h/02h/11h list our LUNs (11h: only LUN 0), 01h/10h/12h
    /// (well-known and administrative LUNs) an empty list.</summary>
    public void ReportLuns(ref ScsiTask task)
    {
        var cdb = task.Cdb;
        byte select = cdb[2];
        uint allocation = Cdb.U32(cdb, 6);
        if (allocation < 16 || select is not (0x00 or 0x01 or 0x02 or 0x10 or 0x11 or 0x12))
        {
            task.Fail(SenseCode.InvalidFieldInCdb);
            return;
        }
        var d = task.Scratch;
        d[..8].Clear();
        int at = 8;
        if (select is 0x00 or 0x02 or 0x11)
        {
            foreach (var l in luns)
            {
                if (select == 0x11 && l.Lun != 0) continue;
                ScsiAddress.EncodeLun(l.Lun, d[at..]);
                at += 8;
            }
        }
        BinaryPrimitives.WriteUInt32BigEndian(d, (uint)(at - 8));
        task.ReturnData(d[..at], allocation);
    }

    /// <summary>
    /// A command to a LUN this target does not have (SPC-4 / SAM-5): INQUIRY answers with peripheral qualifier
    /// 011b, REPORT LUNS lists the LUNs that exist, REQUEST SENSE returns LOGICAL UNIT NOT SUPPORTED as data, and
    /// everything else ends in CHECK CONDITION, ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED.
    /// </summary>
    public void ExecuteForMissingLun(ref ScsiTask task)
    {
        var cdb = task.Cdb;
        int length = ScsiOp.CdbLength(cdb[0]);
        if (length == 0 || length > cdb.Length)
        {
            task.Fail(SenseCode.LunNotSupported);
            return;
        }
        switch (cdb[0])
        {
            case ScsiOp.Inquiry:
                if ((cdb[1] & 0x03) != 0 || cdb[2] != 0)
                {
                    task.Fail(SenseCode.LunNotSupported);
                    return;
                }
                int n = InquiryData.Standard(task.Scratch, present: false);
                task.ReturnData(task.Scratch[..n], Cdb.U16(cdb, 3));
                return;
            case ScsiOp.ReportLuns:
                ReportLuns(ref task);
                return;
            case ScsiOp.RequestSense:
                ScsiLun.RequestSense(ref task, SenseCode.LunNotSupported);
                return;
            default:
                task.Fail(SenseCode.LunNotSupported);
                return;
        }
    }
}
