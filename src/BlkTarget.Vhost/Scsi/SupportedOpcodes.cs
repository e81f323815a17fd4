using System.Buffers.Binary;

namespace BlkTarget.Vhost.Scsi;

/// <summary>The commands a LUN supports, and REPORT SUPPORTED OPERATION CODES over them (SPC-4 6.35).</summary>
public static class SupportedOpcodes
{
    private readonly record struct Command(byte Opcode, ushort ServiceAction, bool HasServiceAction, byte CdbLength);

    private static readonly Command[] Commands =
    [
        new(ScsiOp.TestUnitReady, 0, false, 6),
        new(ScsiOp.RequestSense, 0, false, 6),
        new(ScsiOp.Read6, 0, false, 6),
        new(ScsiOp.Write6, 0, false, 6),
        new(ScsiOp.Inquiry, 0, false, 6),
        new(ScsiOp.ModeSelect6, 0, false, 6),
        new(ScsiOp.ModeSense6, 0, false, 6),
        new(ScsiOp.StartStopUnit, 0, false, 6),
        new(ScsiOp.ReadCapacity10, 0, false, 10),
        new(ScsiOp.Read10, 0, false, 10),
        new(ScsiOp.Write10, 0, false, 10),
        new(ScsiOp.SynchronizeCache10, 0, false, 10),
        new(ScsiOp.WriteSame10, 0, false, 10),
        new(ScsiOp.Unmap, 0, false, 10),
        new(ScsiOp.ModeSelect10, 0, false, 10),
        new(ScsiOp.ModeSense10, 0, false, 10),
        new(ScsiOp.PersistentReserveIn, 0, true, 10),
        new(ScsiOp.PersistentReserveIn, 1, true, 10),
        new(ScsiOp.PersistentReserveIn, 2, true, 10),
        new(ScsiOp.PersistentReserveIn, 3, true, 10),
        new(ScsiOp.PersistentReserveOut, 0, true, 10),
        new(ScsiOp.PersistentReserveOut, 1, true, 10),
        new(ScsiOp.PersistentReserveOut, 2, true, 10),
        new(ScsiOp.PersistentReserveOut, 3, true, 10),
        new(ScsiOp.PersistentReserveOut, 4, true, 10),
        new(ScsiOp.PersistentReserveOut, 5, true, 10),
        new(ScsiOp.PersistentReserveOut, 6, true, 10),
        new(ScsiOp.Read16, 0, false, 16),
        new(ScsiOp.Write16, 0, false, 16),
        new(ScsiOp.SynchronizeCache16, 0, false, 16),
        new(ScsiOp.WriteSame16, 0, false, 16),
        new(ScsiOp.ServiceActionIn16, ScsiOp.SaReadCapacity16, true, 16),
        new(ScsiOp.ReportLuns, 0, false, 12),
        new(ScsiOp.MaintenanceIn, ScsiOp.SaReportSupportedOpcodes, true, 12),
        new(ScsiOp.Read12, 0, false, 12),
        new(ScsiOp.Write12, 0, false, 12),
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
                // CDB usage data: the operation code, then every bit of the other bytes (control byte: none,
                // since NACA is not supported). Conservative: we check the fields we care about ourselves.
                d[4] = m.Opcode;
                d.Slice(5, m.CdbLength - 2).Fill(0xff);
                d[4 + m.CdbLength - 1] = 0x00;
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
