using System.Buffers.Binary;

namespace BlkTarget.Vhost.Scsi;

/// <summary>The commands a LUN supports, and REPORT SUPPORTED OPERATION CODES over them (SPC-4 6.35).</summary>
public static class SupportedOpcodes
{
    /// <summary>A supported command and its CDB usage data (SPC-4 6.35.3, table 257): the operation code (and
    /// service action), then a bit set exactly where the device server evaluates that bit of the CDB (a field it
    /// uses, or one it checks and refuses when set); reserved and ignored bits 0. The control byte is 04h: NACA is
    /// checked (a CDB with NACA 1 is refused), LINK is obsolete.</summary>
    private readonly record struct Command(byte Opcode, ushort ServiceAction, bool HasServiceAction, byte[] Usage)
    {
        public byte CdbLength => (byte)Usage.Length;
    }

    private static Command Plain(params byte[] usage) => new(usage[0], 0, false, usage);

    private static Command WithAction(ushort action, params byte[] usage) => new(usage[0], action, true, usage);

    // Per command, what Execute and its helpers read: RDPROTECT/WRPROTECT (checked: must be 0), FUA of writes, LBA,
    // length; DPO, RARC, FUA of reads, GROUP NUMBER and IMMED of SYNCHRONIZE CACHE are ignored.
    private static readonly Command[] Commands =
    [
        Plain(ScsiOp.TestUnitReady, 0x00, 0x00, 0x00, 0x00, 0x04),
        Plain(ScsiOp.RequestSense, 0x01, 0x00, 0x00, 0xff, 0x04),                 // DESC, allocation length
        Plain(ScsiOp.Read6, 0x1f, 0xff, 0xff, 0xff, 0x04),
        Plain(ScsiOp.Write6, 0x1f, 0xff, 0xff, 0xff, 0x04),
        Plain(ScsiOp.Inquiry, 0x03, 0xff, 0xff, 0xff, 0x04),                      // CMDDT, EVPD, page, allocation
        Plain(ScsiOp.ModeSelect6, 0x01, 0x00, 0x00, 0xff, 0x04),                  // SP, parameter list length
        Plain(ScsiOp.ModeSense6, 0x08, 0xff, 0xff, 0xff, 0x04),                   // DBD, PC + page, subpage, allocation
        Plain(ScsiOp.StartStopUnit, 0x01, 0x00, 0x00, 0xf7, 0x04),                // IMMED; POWER CONDITION, NO_FLUSH, LOEJ, START
        Plain(ScsiOp.ReadCapacity10, 0x00, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x01, 0x04),   // LBA (0 unless PMI), PMI
        Plain(ScsiOp.Read10, 0xe0, 0xff, 0xff, 0xff, 0xff, 0x00, 0xff, 0xff, 0x04),
        Plain(ScsiOp.Write10, 0xe8, 0xff, 0xff, 0xff, 0xff, 0x00, 0xff, 0xff, 0x04),
        Plain(ScsiOp.SynchronizeCache10, 0x00, 0xff, 0xff, 0xff, 0xff, 0x00, 0xff, 0xff, 0x04),
        Plain(ScsiOp.WriteSame10, 0xfe, 0xff, 0xff, 0xff, 0xff, 0x00, 0xff, 0xff, 0x04),      // WRPROTECT, ANCHOR, UNMAP, PBDATA, LBDATA
        Plain(ScsiOp.Unmap, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x04),            // ANCHOR, parameter list length
        Plain(ScsiOp.ModeSelect10, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x04),
        Plain(ScsiOp.ModeSense10, 0x18, 0xff, 0xff, 0x00, 0x00, 0x00, 0xff, 0xff, 0x04),      // LLBAA, DBD
        WithAction(0, ScsiOp.PersistentReserveIn, 0x1f, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x04),
        WithAction(1, ScsiOp.PersistentReserveIn, 0x1f, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x04),
        WithAction(2, ScsiOp.PersistentReserveIn, 0x1f, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x04),
        WithAction(3, ScsiOp.PersistentReserveIn, 0x1f, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x04),
        WithAction(0, ScsiOp.PersistentReserveOut, 0x1f, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x04),
        WithAction(1, ScsiOp.PersistentReserveOut, 0x1f, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x04),
        WithAction(2, ScsiOp.PersistentReserveOut, 0x1f, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x04),
        WithAction(3, ScsiOp.PersistentReserveOut, 0x1f, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x04),
        WithAction(4, ScsiOp.PersistentReserveOut, 0x1f, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x04),
        WithAction(5, ScsiOp.PersistentReserveOut, 0x1f, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x04),
        WithAction(6, ScsiOp.PersistentReserveOut, 0x1f, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x04),
        Plain(ScsiOp.Read16, 0xe0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x04),
        // COMPARE AND WRITE: WRPROTECT (checked: must be 0), FUA; DPO, FUA_NV and GROUP NUMBER ignored; LBA bytes
        // 2-9, NUMBER OF LOGICAL BLOCKS byte 13 (SBC-3 5.2, table 9); bytes 10-12 reserved.
        Plain(ScsiOp.CompareAndWrite, 0xe8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0xff, 0x00, 0x04),
        Plain(ScsiOp.Write16, 0xe8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x04),
        Plain(ScsiOp.SynchronizeCache16, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x04),
        Plain(ScsiOp.WriteSame16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x04),   // + NDOB
        WithAction(ScsiOp.SaReadCapacity16, ScsiOp.ServiceActionIn16, 0x1f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0xff, 0xff, 0xff, 0xff, 0x00, 0x04),                                  // service action, allocation length
        Plain(ScsiOp.ReportLuns, 0x00, 0xff, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x00, 0x04),   // SELECT REPORT, allocation
        WithAction(ScsiOp.SaReportSupportedOpcodes, ScsiOp.MaintenanceIn, 0x1f, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x00, 0x04),                                                          // RCTD, REPORTING OPTIONS, opcode, action, allocation
        Plain(ScsiOp.Read12, 0xe0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x04),
        Plain(ScsiOp.Write12, 0xe8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x04),
    ];

    public static int Count => Commands.Length;

    /// <summary>Bytes the answer can take at most (the all-commands list with timeouts descriptors).</summary>
    public static int MaxLength => 4 + Commands.Length * 20;

    public static void Report(ref ScsiTask task)
    {
        var cdb = task.Cdb;
        bool timeouts = (cdb[2] & 0x80) != 0;
        int options = cdb[2] & 0x07;
        byte opcode = cdb[3];
        ushort serviceAction = Cdb.U16(cdb, 4);
        ulong allocation = Cdb.U32(cdb, 6);
        var d = task.Scratch;
        int length;
        if (options == 0)
        {
            int at = 4;
            foreach (var c in Commands)
            {
                d.Slice(at, 8).Clear();
                d[at] = c.Opcode;
                BinaryPrimitives.WriteUInt16BigEndian(d[(at + 2)..], c.ServiceAction);
                d[at + 5] = (byte)((timeouts ? 0x02 : 0) | (c.HasServiceAction ? 0x01 : 0));
                BinaryPrimitives.WriteUInt16BigEndian(d[(at + 6)..], c.CdbLength);
                at += 8;
                if (timeouts) at += Timeouts(d[at..]);
            }
            BinaryPrimitives.WriteUInt32BigEndian(d, (uint)(at - 4));
            length = at;
        }
        else if (options is 1 or 2 or 3)
        {
            bool opcodeHasServiceActions = false;
            Command? match = null;
            foreach (var c in Commands)
            {
                if (c.Opcode != opcode) continue;
                opcodeHasServiceActions |= c.HasServiceAction;
                if (!c.HasServiceAction || c.ServiceAction == serviceAction) match ??= c;
            }
            if ((options == 1 && opcodeHasServiceActions) || (options == 2 && match is { HasServiceAction: false }))
            {
                task.Fail(SenseCode.InvalidFieldInCdb);
                return;
            }
            if (options == 1 && match is { HasServiceAction: true }) match = null;
            d[..4].Clear();
            if (match is Command m)
            {
                d[1] = (byte)((timeouts ? 0x80 : 0) | 0x03);           // supported, as the standard says
                BinaryPrimitives.WriteUInt16BigEndian(d[2..], m.CdbLength);
                m.Usage.CopyTo(d[4..]);
                length = 4 + m.CdbLength;
                if (timeouts) length += Timeouts(d[length..]);
            }
            else
            {
                d[1] = 0x01;                                          // not supported
                length = 4;
            }
        }
        else
        {
            task.Fail(SenseCode.InvalidFieldInCdb);
            return;
        }
        task.ReturnData(d[..length], allocation);
    }

    /// <summary>A command timeouts descriptor with no timeouts given.</summary>
    private static int Timeouts(Span<byte> d)
    {
        d[..12].Clear();
        BinaryPrimitives.WriteUInt16BigEndian(d, 0x0a);
        return 12;
    }
}
