using BlkTarget.Vhost.Stats;

namespace BlkTarget.Vhost.Scsi;

/// <summary>The statistics error kind of a command that ended in CHECK CONDITION without a backend failure.</summary>
public static class ScsiErrorKinds
{
    /// <summary>LBA out of range → OutOfRange; write protected → ReadOnly; space allocation failed → NoSpace; invalid
    /// opcode or CDB field → Unsupported; MEDIUM ERROR → IoError; anything else (unit attentions, reservation
    /// conflicts, parameter errors) → Invalid.</summary>
    public static IoErrorKind For(SenseCode sense)
    {
        if (sense == SenseCode.LbaOutOfRange) return IoErrorKind.OutOfRange;
        if (sense == SenseCode.WriteProtected) return IoErrorKind.ReadOnly;
        if (sense == SenseCode.SpaceAllocationFailed) return IoErrorKind.NoSpace;
        if (sense == SenseCode.InvalidOpcode || sense == SenseCode.InvalidFieldInCdb) return IoErrorKind.Unsupported;
        if (sense.Key == SenseKey.MediumError) return IoErrorKind.IoError;
        return IoErrorKind.Invalid;
    }
}
