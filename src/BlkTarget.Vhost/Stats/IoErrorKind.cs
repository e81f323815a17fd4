using BlkTarget.Storage;

namespace BlkTarget.Vhost.Stats;

/// <summary>Why a counted request failed (<see cref="None"/>: it did not).</summary>
public enum IoErrorKind : byte
{
    None,
    /// <summary>The backend failed the I/O (EIO and the like; SCSI MEDIUM ERROR).</summary>
    IoError,
    /// <summary>The request type or a field of it is not supported.</summary>
    Unsupported,
    /// <summary>Outside the disk, or not aligned to its block size.</summary>
    OutOfRange,
    /// <summary>A write-type request to a read-only disk.</summary>
    ReadOnly,
    /// <summary>The backing store ran out of space.</summary>
    NoSpace,
    /// <summary>Malformed by the guest (bad header, too many segments, a missing target ...), or a SCSI condition
    /// such as a unit attention.</summary>
    Invalid,
}

/// <summary>Names and conversions of <see cref="IoErrorKind"/>.</summary>
public static class IoErrorKinds
{
    /// <summary>Number of <see cref="IoErrorKind"/> values, <see cref="IoErrorKind.None"/> included.</summary>
    public const int Count = 7;

    private static readonly string[] Names = ["none", "io_error", "unsupported", "out_of_range", "read_only", "no_space", "invalid"];

    /// <summary>The snake_case name used in RPC results and metric labels.</summary>
    public static string Name(IoErrorKind kind) => Names[(int)kind];

    /// <summary>The failure kinds (every value but <see cref="IoErrorKind.None"/>), in enum order.</summary>
    public static IReadOnlyList<IoErrorKind> Failures { get; } =
        [IoErrorKind.IoError, IoErrorKind.Unsupported, IoErrorKind.OutOfRange, IoErrorKind.ReadOnly, IoErrorKind.NoSpace, IoErrorKind.Invalid];

    /// <summary>The kind a backend completion status stands for.</summary>
    public static IoErrorKind From(BlockStatus status) => status switch
    {
        BlockStatus.Ok => IoErrorKind.None,
        BlockStatus.Unsupported => IoErrorKind.Unsupported,
        BlockStatus.OutOfRange => IoErrorKind.OutOfRange,
        BlockStatus.ReadOnly => IoErrorKind.ReadOnly,
        BlockStatus.NoSpace => IoErrorKind.NoSpace,
        _ => IoErrorKind.IoError,
    };
}
