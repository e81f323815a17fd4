using System.Buffers.Binary;
using System.Text;

namespace BlkTarget.Vhost.Scsi;

/// <summary>Standard INQUIRY data and the vital product data pages a LUN reports (SPC-4 6.6, 7.8; SBC-3 6.6).</summary>
public static class InquiryData
{
    public const string Vendor = "BLKTARGT";          // T10 vendor identification, 8 bytes
    public const string Product = "BlkTarget disk";   // padded to 16 bytes
    public const string Revision = "0001";
    public const int StandardLength = 96;
    public static ReadOnlySpan<byte> SupportedPages => [0x00, 0x80, 0x83, 0x86, 0xb0, 0xb1, 0xb2];

    private static void Ascii(Span<byte> destination, string text)
    {
        destination.Fill((byte)' ');
        Encoding.ASCII.GetBytes(text.AsSpan(0, Math.Min(text.Length, destination.Length)), destination);
    }

    /// <summary>Standard INQUIRY data; <paramref name="present"/> false gives peripheral qualifier 011b and device
    /// type 1Fh (no logical unit at this LUN).</summary>
    public static int Standard(Span<byte> d, bool present)
    {
        d[..StandardLength].Clear();
        d[0] = present ? (byte)0x00 : (byte)0x7f;          // direct-access block device
        d[2] = 0x06;                                       // SPC-4
        d[3] = 0x12;                                       // HISUP, response data format 2
        d[4] = StandardLength - 5;
        d[7] = 0x02;                                       // CMDQUE
        Ascii(d.Slice(8, 8), Vendor);
        Ascii(d.Slice(16, 16), Product);
        Ascii(d.Slice(32, 4), Revision);
        // Version descriptors: SAM-5, SPC-4, SBC-3.
        BinaryPrimitives.WriteUInt16BigEndian(d[58..], 0x00a0);
        BinaryPrimitives.WriteUInt16BigEndian(d[60..], 0x0460);
        BinaryPrimitives.WriteUInt16BigEndian(d[62..], 0x04c0);
        return StandardLength;
    }

    private static int Page(Span<byte> d, byte code, int payload)
    {
        d[0] = 0x00;
        d[1] = code;
        BinaryPrimitives.WriteUInt16BigEndian(d[2..], (ushort)payload);
        return 4 + payload;
    }

    /// <summary>Builds VPD page <paramref name="code"/> into <paramref name="d"/>; -1 when the page is not supported.</summary>
    public static int Vpd(Span<byte> d, byte code, ScsiLun lun)
    {
        d[..64].Clear();
        switch (code)
        {
            case 0x00:
                SupportedPages.CopyTo(d[4..]);
                return Page(d, code, SupportedPages.Length);
            case 0x80:
            {
                int n = Encoding.ASCII.GetBytes(lun.Serial, d[4..]);
                return Page(d, code, n);
            }
            case 0x83:
                return Page(d, code, DeviceIdentification(d[4..], lun));
            case 0x86:
                ExtendedInquiry(d[4..]);
                return Page(d, code, 0x3c);
            case 0xb0:
                BlockLimits(d[4..], lun);
                return Page(d, code, 0x3c);
            case 0xb1:
                BinaryPrimitives.WriteUInt16BigEndian(d[4..], 0x0001);   // medium rotation rate: non-rotating
                return Page(d, code, 0x3c);
            case 0xb2:
                if (lun.Provisioning)
                {
                    d[5] = (byte)(0x80 | 0x40 | 0x20 | (lun.UnmapReadsZeros ? 0x04 : 0));   // LBPU, LBPWS, LBPWS10, LBPRZ
                    d[6] = 0x02;                                         // thin provisioned
                }
                return Page(d, code, 4);
            default:
                return -1;
        }
    }

    /// <summary>
    /// Extended INQUIRY Data (SPC-4 7.8.7), payload offsets = page offsets - 4. Only what the device server really
    /// does, the same for every LUN: no protection information (SPT, GRD_CHK, APP_CHK, REF_CHK 0); task attributes
    /// SIMPLE only (SIMPSUP; HEADSUP and ORDSUP 0: a HEAD OF QUEUE or ORDERED task runs as a SIMPLE one); V_SUP, a
    /// volatile write cache (the caching mode page's WCE is there, changeable, on every LUN; SYNCHRONIZE CACHE
    /// flushes it); no non-volatile cache, no grouping, no priority, no microcode download. LUICLR 1: SPC-4 makes it
    /// mandatory, and it is what happens: the I_T nexus's own state (unit attentions, reservation sense) belongs to
    /// its <see cref="Reservations.ScsiNexus"/>, and a new frontend session gets a new one (<see cref="ScsiLun.BeginNexus"/>).
    /// </summary>
    private static void ExtendedInquiry(Span<byte> d)
    {
        d[1] = 0x01;                                                      // SIMPSUP
        d[2] = 0x01;                                                      // V_SUP
        d[3] = 0x01;                                                      // LUICLR
    }

    /// <summary>Page 83h designators (SPC-4 7.8.6): NAA 3 (locally assigned, 8 bytes) and T10 vendor ID (vendor +
    /// serial), both associated with the LU, then the relative target port identifier (7.8.6.6, association
    /// 01b: the target port the command came through).</summary>
    private static int DeviceIdentification(Span<byte> d, ScsiLun lun)
    {
        d[0] = 0x01;                 // protocol 0, code set binary
        d[1] = 0x03;                 // PIV 0, association LU, designator type NAA
        d[3] = 8;
        BinaryPrimitives.WriteUInt64BigEndian(d[4..], lun.NaaIdentifier);
        int at = 12;
        var serial = lun.Serial;
        d[at] = 0x02;                // code set ASCII
        d[at + 1] = 0x01;            // association LU, type T10 vendor ID
        Ascii(d.Slice(at + 4, 8), Vendor);
        int n = Encoding.ASCII.GetBytes(serial, d[(at + 12)..]);
        d[at + 3] = (byte)(8 + n);
        at += 12 + n;
        d[at..(at + 8)].Clear();
        d[at] = 0x01;                // protocol 0 (PIV 0), code set binary
        d[at + 1] = 0x14;            // PIV 0, association target port, type 4h relative target port identifier
        d[at + 3] = 4;
        BinaryPrimitives.WriteUInt16BigEndian(d[(at + 6)..], lun.RelativeTargetPort);   // 0 is reserved; 1, 2, ... per export
        return at + 8;
    }

    private static void BlockLimits(Span<byte> d, ScsiLun lun)
    {
        // d is the page payload: SBC-3 offsets minus 4.
        d[0] = 0x01;                                                      // WSNZ: WRITE SAME with 0 blocks refused
        d[1] = lun.Limits.MaxCompareAndWriteBlocks;                       // MAXIMUM COMPARE AND WRITE LENGTH
        BinaryPrimitives.WriteUInt16BigEndian(d[2..], 1);                 // optimal transfer length granularity
        BinaryPrimitives.WriteUInt32BigEndian(d[4..], lun.Limits.MaxTransferBlocks);
        if (lun.Provisioning)
        {
            BinaryPrimitives.WriteUInt32BigEndian(d[16..], lun.Limits.MaxUnmapBlocks);
            BinaryPrimitives.WriteUInt32BigEndian(d[20..], lun.Limits.MaxUnmapDescriptors);
            BinaryPrimitives.WriteUInt32BigEndian(d[24..], lun.Limits.UnmapGranularityBlocks);
        }
        BinaryPrimitives.WriteUInt64BigEndian(d[32..], lun.Limits.MaxWriteSameBlocks);
    }
}
