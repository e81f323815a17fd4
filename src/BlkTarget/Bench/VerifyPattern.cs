namespace BlkTarget.Bench;

/// <summary>
/// The data a verifying job writes: every 8-byte word of a block holds its own device byte offset mixed with the
/// block's write generation and the job's seed, so a read-back catches data from the wrong place, a stale
/// (older) write, and a block nobody wrote.
/// </summary>
public static unsafe class VerifyPattern
{
    private static ulong Word(ulong deviceOffset, uint generation, ulong seed) =>
        (deviceOffset * 0x9E37_79B9_7F4A_7C15UL) ^ ((ulong)generation << 40) ^ seed;

    public static void Fill(byte* buffer, uint length, ulong deviceOffset, uint generation, ulong seed)
    {
        var words = (ulong*)buffer;
        uint count = length / 8;
        for (uint i = 0; i < count; i++) words[i] = Word(deviceOffset + 8UL * i, generation, seed);
    }

    /// <summary>Offset (within the buffer) of the first word that differs, or -1 when all match.</summary>
    public static long FirstMismatch(byte* buffer, uint length, ulong deviceOffset, uint generation, ulong seed)
    {
        var words = (ulong*)buffer;
        uint count = length / 8;
        for (uint i = 0; i < count; i++)
            if (words[i] != Word(deviceOffset + 8UL * i, generation, seed)) return 8L * i;
        return -1;
    }
}
