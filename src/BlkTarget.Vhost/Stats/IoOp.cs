using BlkTarget.Storage;

namespace BlkTarget.Vhost.Stats;

/// <summary>What a counted request did. The first five match <see cref="BlockOperation"/>; <see cref="Other"/> is
/// everything without data on the disk (virtio-blk GET_ID, SCSI INQUIRY, TEST UNIT READY, unknown types ...).</summary>
public enum IoOp : byte
{
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
    Other,
}

/// <summary>Names and conversions of <see cref="IoOp"/>.</summary>
public static class IoOps
{
    /// <summary>Number of <see cref="IoOp"/> values.</summary>
    public const int Count = 6;

    private static readonly string[] Names = ["read", "write", "flush", "discard", "write_zeroes", "other"];

    /// <summary>The snake_case name used in RPC results and metric labels ("read", "write_zeroes", ...).</summary>
    public static string Name(IoOp op) => Names[(int)op];

    /// <summary>Every op, in enum order.</summary>
    public static IReadOnlyList<IoOp> All { get; } = [IoOp.Read, IoOp.Write, IoOp.Flush, IoOp.Discard, IoOp.WriteZeroes, IoOp.Other];

    public static IoOp From(BlockOperation operation) => (IoOp)operation;
}
