using System.Runtime.InteropServices;
using BlkTarget.CrashWriter;
using BlkTarget.Storage;
using BlkTarget.Storage.Image;
using Microsoft.Extensions.Logging.Abstractions;

// Usage: BlkTarget.CrashWriter IMAGE JOURNAL SEED COUNT
// Runs the round's operations against the image at queue depth 1 and appends "F <sequence>" to JOURNAL
// (synced) after every completed flush, until done or killed.
if (args.Length != 4) return 2;
string image = args[0], journalPath = args[1];
int seed = int.Parse(args[2]), count = int.Parse(args[3]);

using var disk = ImageDisk.Open(image, readOnly: false, blockSize: 512, directIo: true, NullLogger.Instance);
using var io = new IoContext(32);
var sink = new Sink();
using var channel = disk.OpenChannel(io, sink, 64);
using var journal = new FileStream(journalPath, FileMode.Append, FileAccess.Write, FileShare.Read, 1, FileOptions.WriteThrough);
unsafe
{
    byte* buffer = (byte*)NativeMemory.AlignedAlloc(8 * CrashWorkload.BlockSize, 4096);
    foreach (var op in CrashWorkload.Generate(seed, count))
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
        sink.Done = false;
        channel.Submit(request);
        while (!sink.Done) io.Poll();
        if (sink.Status != BlockStatus.Ok)
        {
            Console.Error.WriteLine($"operation {op.Sequence} ({op.Kind}) failed: {sink.Status}");
            return 1;
        }
        if (op.Kind == CrashWorkload.Kind.Flush)
        {
            journal.Write(System.Text.Encoding.ASCII.GetBytes($"F {op.Sequence}\n"));
            journal.Flush(flushToDisk: true);
        }
    }
}
return 0;

sealed class Sink : IBlockCompletionSink
{
    public bool Done;
    public BlockStatus Status;

    public void Complete(ulong tag, BlockStatus status)
    {
        Status = status;
        Done = true;
    }

    public void ChannelFaulted(Exception error) => throw new InvalidOperationException("the image channel faulted", error);
}
