namespace BlkTarget.CrashWriter;

/// <summary>
/// The deterministic operation sequence of one crash round, shared by the writer (child process) and the
/// verifier (test): both regenerate it from the seed, so only the last completed flush needs recording.
/// </summary>
public static class CrashWorkload
{
    public const int BlockSize = 4096;
    public const int Blocks = 2048;                 // an 8 MiB disk
    public const ulong DiskSize = (ulong)Blocks * BlockSize;

    public enum Kind { Write, Discard, Flush }

    public readonly record struct Operation(int Sequence, Kind Kind, int FirstBlock, int BlockCount);

    /// <summary>The operations queue <paramref name="queue"/> of <paramref name="queues"/> runs, in order; sequence
    /// numbers are unique over all queues.</summary>
    public static IEnumerable<Operation> Generate(int seed, int count, int queues, int queue) =>
        Generate(seed * 31 + queue, count / queues).Select(op => op with { Sequence = (op.Sequence - 1) * queues + queue + 1 });

    /// <summary>Every queue's operations (for the verifier).</summary>
    public static IEnumerable<Operation> GenerateAll(int seed, int count, int queues) =>
        Enumerable.Range(0, queues).SelectMany(q => Generate(seed, count, queues, q));

    private static IEnumerable<Operation> Generate(int seed, int count)
    {
        var random = new Random(seed);
        for (int i = 1; i <= count; i++)
        {
            int roll = random.Next(100);
            int blocks = random.Next(1, 9);
            int first = random.Next(0, Blocks - blocks);
            if (roll < 75) yield return new Operation(i, Kind.Write, first, blocks);
            else if (roll < 85) yield return new Operation(i, Kind.Discard, first, blocks * 4 > Blocks - first ? Blocks - first : blocks * 4);
            else yield return new Operation(i, Kind.Flush, 0, 0);
        }
    }

    /// <summary>What a write with <paramref name="sequence"/> puts into <paramref name="block"/>: the pair
    /// (sequence, block) repeated, so a read tells which write it came from and whether it is whole.</summary>
    public static void Fill(Span<byte> destination, int sequence, int block)
    {
        for (int i = 0; i + 8 <= destination.Length; i += 8)
        {
            BitConverter.TryWriteBytes(destination[i..], sequence);
            BitConverter.TryWriteBytes(destination[(i + 4)..], block);
        }
    }
}
