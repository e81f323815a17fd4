using System.Runtime.InteropServices;
using BlkTarget.CrashWriter;
using BlkTarget.Storage;
using BlkTarget.Storage.Image;
using Microsoft.Extensions.Logging.Abstractions;

// Usage: BlkTarget.CrashWriter IMAGE JOURNAL SEED COUNT QUEUES
// Runs QUEUES threads, each with its own I/O context and channel (as reactors serve the queues of one disk), each
// running its share of the round's operations at queue depth 1, until done or killed. Every submission,
// completion and flush goes to JOURNAL as a line in the order it happened ("B seq", "C seq", "S seq" when a flush
// is submitted, "F seq" when it completed); plain writes suffice, a SIGKILL does not lose what reached the kernel.
if (args.Length != 5) return 2;
string image = args[0], journalPath = args[1];
int seed = int.Parse(args[2]), count = int.Parse(args[3]), queues = int.Parse(args[4]);

using var disk = ImageDisk.Open(image, readOnly: false, blockSize: 512, directIo: true, NullLogger.Instance);
using var journal = new CrashJournal(journalPath);
var failures = new List<string>();
var threads = Enumerable.Range(0, queues).Select(q => new Thread(() =>
{
    try
    {
        RunQueue(CrashWorkload.Generate(seed, count, queues, q));
    }
    catch (Exception e)
    {
        lock (failures) failures.Add(e.Message);
    }
})).ToList();
threads.ForEach(t => t.Start());
threads.ForEach(t => t.Join());
foreach (var failure in failures) Console.Error.WriteLine(failure);
return failures.Count == 0 ? 0 : 1;

unsafe void RunQueue(IEnumerable<CrashWorkload.Operation> operations)
{
    using var io = new IoContext(32);
    var sink = new Sink();
    using var channel = disk.OpenChannel(io, sink, 64);
    byte* buffer = (byte*)NativeMemory.AlignedAlloc(8 * CrashWorkload.BlockSize, 4096);
    foreach (var op in operations)
    {
        var request = new BlockRequest { Tag = (ulong)op.Sequence, Offset = (ulong)op.FirstBlock * CrashWorkload.BlockSize, Length = (ulong)op.BlockCount * CrashWorkload.BlockSize };
        var iov = new IoVec(buffer, (nuint)request.Length);
        switch (op.Kind)
        {
            case CrashWorkload.Kind.Write:
                for (int b = 0; b < op.BlockCount; b++)
                    CrashWorkload.Fill(new Span<byte>(buffer + b * CrashWorkload.BlockSize, CrashWorkload.BlockSize), op.Sequence, op.FirstBlock + b);
                request.Operation = BlockOperation.Write;
                request.Iov = &iov;
                request.IovCount = 1;
                break;
            case CrashWorkload.Kind.Discard:
                request.Operation = BlockOperation.Discard;
                break;
            default:
                request.Operation = BlockOperation.Flush;
                request.Offset = 0;
                request.Length = 0;
                break;
        }
        bool flush = op.Kind == CrashWorkload.Kind.Flush;
        journal.Record(flush ? 'S' : 'B', op.Sequence);
        sink.Done = false;
        channel.Submit(request);
        while (!sink.Done) io.Poll();
        if (sink.Status != BlockStatus.Ok) throw new InvalidOperationException($"operation {op.Sequence} ({op.Kind}) failed: {sink.Status}");
        journal.Record(flush ? 'F' : 'C', op.Sequence);
    }
}

sealed class Sink : IBlockCompletionSink
{
    public bool Done;
    public BlockStatus Status;

    public void Complete(ulong tag, BlockStatus status)
    {
        Status = status;
        Done = true;
    }

    public void ChannelFaulted(Exception error) => throw new InvalidOperationException("channel faulted", error);
}

/// <summary>The order of events across threads, one line each, written straight to the kernel.</summary>
sealed class CrashJournal(string path) : IDisposable
{
    private readonly FileStream _file = new(path, FileMode.Append, FileAccess.Write, FileShare.Read, bufferSize: 0);
    private readonly Lock _lock = new();

    public void Record(char what, int sequence)
    {
        var line = System.Text.Encoding.ASCII.GetBytes($"{what} {sequence}\n");
        lock (_lock) _file.Write(line);
    }

    public void Dispose() => _file.Dispose();
}
