using System.Buffers.Binary;

namespace BlkTarget.Vhost.Scsi;

/// <summary>MODE SENSE / MODE SELECT: the caching page (WCE, changeable) and the control page (SPC-4 7.5, SBC-3 6.5).</summary>
public static class ModePages
{
    public const byte CachingPage = 0x08;
    public const byte ControlPage = 0x0a;
    public const byte AllPages = 0x3f;
    private const int CachingLength = 20;
    private const int ControlLength = 12;

    private static int Caching(Span<byte> d, int pageControl, bool writeCache)
    {
        d[..CachingLength].Clear();
        d[0] = CachingPage;
        d[1] = CachingLength - 2;
        d[2] = pageControl switch
        {
            1 => 0x04,                                  // changeable: WCE only
            _ => writeCache ? (byte)0x04 : (byte)0x00,
        };
        return CachingLength;
    }

    private static int Control(Span<byte> d, int pageControl)
    {
        d[..ControlLength].Clear();
        d[0] = ControlPage;
        d[1] = ControlLength - 2;
        if (pageControl != 1) d[3] = 0x10;              // queue algorithm modifier 1: unrestricted reordering
        return ControlLength;
    }

    /// <summary>Builds MODE SENSE(6) or (10) data; returns its length or fails the task.</summary>
    public static void Sense(ref ScsiTask task, ScsiLun lun, bool ten)
    {
        var cdb = task.Cdb;
        bool dbd = (cdb[1] & 0x08) != 0;
        bool llbaa = ten && (cdb[1] & 0x10) != 0;
        int pageControl = cdb[2] >> 6;
        int page = cdb[2] & 0x3f;
        byte subpage = cdb[3];
        ulong allocation = ten ? Cdb.U16(cdb, 7) : cdb[4];
        if (pageControl == 3)
        {
            task.Fail(SenseCode.SavingParametersNotSupported);
            return;
        }
        if (subpage != 0 && !(subpage == 0xff && page == AllPages))
        {
            task.Fail(SenseCode.InvalidFieldInCdb);
            return;
        }
        var d = task.Scratch;
        int header = ten ? 8 : 4;
        d[..header].Clear();
        int at = header;
        if (!dbd)
        {
            ulong blocks = lun.Info.BlockCount;
            if (llbaa)
            {
                d.Slice(at, 16).Clear();
                BinaryPrimitives.WriteUInt64BigEndian(d[at..], blocks);
                BinaryPrimitives.WriteUInt32BigEndian(d[(at + 12)..], lun.Info.BlockSize);
                at += 16;
            }
            else
            {
                d.Slice(at, 8).Clear();
                BinaryPrimitives.WriteUInt32BigEndian(d[at..], (uint)Math.Min(blocks, uint.MaxValue));
                BinaryPrimitives.WriteUInt32BigEndian(d[(at + 4)..], lun.Info.BlockSize & 0xff_ffff);
                at += 8;
            }
        }
        int descriptors = at - header;
        bool wce = pageControl == 2 ? lun.DefaultWriteCache : lun.WriteCacheEnabled;
        switch (page)
        {
            case CachingPage: at += Caching(d[at..], pageControl, wce); break;
            case ControlPage: at += Control(d[at..], pageControl); break;
            case AllPages:
                at += Caching(d[at..], pageControl, wce);
                at += Control(d[at..], pageControl);
                break;
            default:
                task.Fail(SenseCode.InvalidFieldInCdb);
                return;
        }
        byte deviceSpecific = (byte)(0x10 | (lun.ReadOnly ? 0x80 : 0));   // DPOFUA, WP
        if (ten)
        {
            BinaryPrimitives.WriteUInt16BigEndian(d, (ushort)(at - 2));
            d[3] = deviceSpecific;
            d[4] = llbaa && !dbd ? (byte)1 : (byte)0;
            BinaryPrimitives.WriteUInt16BigEndian(d[6..], (ushort)descriptors);
        }
        else
        {
            d[0] = (byte)(at - 1);
            d[2] = deviceSpecific;
            d[3] = (byte)descriptors;
        }
        task.ReturnData(d[..at], allocation);
    }

    /// <summary>MODE SELECT(6)/(10): only WCE of the caching page can change; every other field must carry its
    /// current value. Nothing is applied unless the whole parameter list is valid.</summary>
    public static void Select(ref ScsiTask task, ScsiLun lun, bool ten)
    {
        var cdb = task.Cdb;
        if ((cdb[1] & 0x01) != 0)
        {
            task.Fail(SenseCode.InvalidFieldInCdb);          // SP: we keep no saved pages
            return;
        }
        uint length = ten ? Cdb.U16(cdb, 7) : cdb[4];
        if (length == 0)
        {
            task.Good();
            return;
        }
        int header = ten ? 8 : 4;
        if (length < header)
        {
            task.Fail(SenseCode.ParameterListLengthError);
            return;
        }
        if (!task.TryReadParameters(length, out var p)) return;
        bool longLba = ten && (p[4] & 0x01) != 0;
        int descriptorLength = ten ? Cdb.U16(p, 6) : p[3];
        int descriptorSize = longLba ? 16 : 8;
        if (descriptorLength % descriptorSize != 0 || header + descriptorLength > p.Length)
        {
            task.Fail(SenseCode.InvalidFieldInParameterList);
            return;
        }
        for (int at = header; at < header + descriptorLength; at += descriptorSize)
        {
            uint blockLength = longLba ? Cdb.U32(p, at + 12) : Cdb.U24(p, at + 5);
            if (blockLength != lun.Info.BlockSize)
            {
                task.Fail(SenseCode.InvalidFieldInParameterList);
                return;
            }
        }
        bool? newWce = null;
        Span<byte> current = stackalloc byte[CachingLength];
        for (int at = header + descriptorLength; at < p.Length;)
        {
            if (p.Length - at < 2 || (p[at] & 0x40) != 0)
            {
                task.Fail(SenseCode.InvalidFieldInParameterList);
                return;
            }
            int page = p[at] & 0x3f;
            int pageLength = p[at + 1] + 2;
            if (at + pageLength > p.Length)
            {
                task.Fail(SenseCode.ParameterListLengthError);
                return;
            }
            var given = p.Slice(at, pageLength);
            int expected = page switch
            {
                CachingPage => Caching(current, 0, lun.WriteCacheEnabled),
                ControlPage => Control(current, 0),
                _ => -1,
            };
            if (expected != pageLength)
            {
                task.Fail(SenseCode.InvalidFieldInParameterList);
                return;
            }
            for (int i = 1; i < pageLength; i++)
            {
                byte mask = page == CachingPage && i == 2 ? unchecked((byte)~0x04) : (byte)0xff;
                if ((given[i] & mask) != (current[i] & mask))
                {
                    task.Fail(SenseCode.InvalidFieldInParameterList);
                    return;
                }
            }
            if (page == CachingPage) newWce = (given[2] & 0x04) != 0;
            at += pageLength;
        }
        if (newWce is bool wce) lun.WriteCacheEnabled = wce;
        task.Good();
    }
}
