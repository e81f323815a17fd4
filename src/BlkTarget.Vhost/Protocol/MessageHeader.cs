using System.Buffers.Binary;

namespace BlkTarget.Vhost.Protocol;

/// <summary>The 12-byte header in front of every vhost-user message: request, flags, payload size.</summary>
public readonly record struct MessageHeader(VhostUserRequest Request, uint Flags, uint Size)
{
    public const int Length = 12;
    /// <summary>Largest payload we accept; QEMU's biggest (SET_MEM_TABLE with 8 regions) is 264 bytes.</summary>
    public const int MaxPayload = 4096;
    public const uint VersionMask = 0x3;
    public const uint Version = 0x1;
    public const uint ReplyFlag = 0x4;
    public const uint NeedReplyFlag = 0x8;

    public bool NeedsReply => (Flags & NeedReplyFlag) != 0;
    public bool IsReply => (Flags & ReplyFlag) != 0;
    public bool HasValidVersion => (Flags & VersionMask) == Version;

    public static MessageHeader Read(ReadOnlySpan<byte> bytes) => new(
        (VhostUserRequest)BinaryPrimitives.ReadUInt32LittleEndian(bytes),
        BinaryPrimitives.ReadUInt32LittleEndian(bytes[4..]),
        BinaryPrimitives.ReadUInt32LittleEndian(bytes[8..]));

    public void Write(Span<byte> bytes)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(bytes, (uint)Request);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes[4..], Flags);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes[8..], Size);
    }
}
