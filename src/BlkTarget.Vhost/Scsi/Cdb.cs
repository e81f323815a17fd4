using System.Buffers.Binary;

namespace BlkTarget.Vhost.Scsi;

/// <summary>Decoding of CDB fields (all big-endian).</summary>
public static class Cdb
{
    public static ushort U16(ReadOnlySpan<byte> cdb, int offset) => BinaryPrimitives.ReadUInt16BigEndian(cdb[offset..]);
    public static uint U24(ReadOnlySpan<byte> cdb, int offset) => (uint)(cdb[offset] << 16 | cdb[offset + 1] << 8 | cdb[offset + 2]);
    public static uint U32(ReadOnlySpan<byte> cdb, int offset) => BinaryPrimitives.ReadUInt32BigEndian(cdb[offset..]);
    public static ulong U64(ReadOnlySpan<byte> cdb, int offset) => BinaryPrimitives.ReadUInt64BigEndian(cdb[offset..]);

    /// <summary>Whether the CDB's control byte asks for NACA, which we do not support (no ACA).</summary>
    public static bool HasNaca(ReadOnlySpan<byte> cdb, int length) => (cdb[length - 1] & 0x04) != 0;

    public static bool IsRead(byte opcode) => opcode is ScsiOp.Read6 or ScsiOp.Read10 or ScsiOp.Read12 or ScsiOp.Read16;
    public static bool IsWrite(byte opcode) => opcode is ScsiOp.Write6 or ScsiOp.Write10 or ScsiOp.Write12 or ScsiOp.Write16;

    /// <summary>
    /// Decodes READ/WRITE(6/10/12/16): LBA, block count and FUA. False when a field we do not support is set
    /// (RDPROTECT/WRPROTECT: no protection information).
    /// </summary>
    public static bool TryDecodeReadWrite(ReadOnlySpan<byte> cdb, out ulong lba, out uint blocks, out bool fua)
    {
        lba = 0;
        blocks = 0;
        fua = false;
        switch (cdb[0])
        {
            case ScsiOp.Read6:
            case ScsiOp.Write6:
                lba = U24(cdb, 1) & 0x1f_ffff;
                blocks = cdb[4] == 0 ? 256u : cdb[4];
                return true;
            case ScsiOp.Read10:
            case ScsiOp.Write10:
                lba = U32(cdb, 2);
                blocks = U16(cdb, 7);
                break;
            case ScsiOp.Read12:
            case ScsiOp.Write12:
                lba = U32(cdb, 2);
                blocks = U32(cdb, 6);
                break;
            case ScsiOp.Read16:
            case ScsiOp.Write16:
                lba = U64(cdb, 2);
                blocks = U32(cdb, 10);
                break;
            default:
                return false;
        }
        fua = (cdb[1] & 0x08) != 0;
        return cdb[1] >> 5 == 0;
    }
}
