namespace BlkTarget.Bench;

/// <summary>
/// What a verifying queue knows about its slice of the device: the generation last written to each block
/// (0 = never written by this job, contents unknown) and which blocks have a request in flight, so that no two
/// requests on the same block overlap and every read has a definite expected content.
/// </summary>
internal sealed class BlockLedger(ulong blocks)
{
    private readonly uint[] _generations = new uint[checked((int)blocks)];
    private readonly bool[] _busy = new bool[checked((int)blocks)];

    public ulong Blocks => (ulong)_generations.Length;

    public bool IsBusy(ulong block) => _busy[block];
    public void SetBusy(ulong block, bool busy) => _busy[block] = busy;
    public uint Generation(ulong block) => _generations[block];
    public void SetGeneration(ulong block, uint generation) => _generations[block] = generation;

    public ulong WrittenBlocks
    {
        get
        {
            ulong n = 0;
            foreach (uint g in _generations) if (g != 0) n++;
            return n;
        }
    }

    /// <summary>The largest slice a ledger may track (a uint and a bool per block).</summary>
    public const ulong MaxBlocks = 256UL << 20;
}
