namespace BlkTarget.Vhost.Scsi.Atomicity;

/// <summary>A run of logical blocks [<see cref="Lba"/>, <see cref="Lba"/> + <see cref="Blocks"/>), in blocks of
/// the LUN it addresses; already checked against the capacity (so the end does not overflow).</summary>
public readonly record struct BlockRange(ulong Lba, ulong Blocks)
{
    public ulong End => Lba + Blocks;

    /// <summary>Whether the two runs share a block (an empty run shares none).</summary>
    public bool Overlaps(ulong lba, ulong blocks) => Blocks != 0 && blocks != 0 && lba < End && Lba < lba + blocks;
}
