using System.Diagnostics;
using System.Runtime.InteropServices;
using BlkTarget.Storage.Image;
using BlkTarget.Storage.Tests.Conformance;
using Xunit.Abstractions;

namespace BlkTarget.Storage.Tests.Concurrency;

/// <summary>
/// Several channels of one backend on several threads (the way several reactors serve the queues of one disk)
/// write, read, discard, write zeroes and flush overlapping clusters at once. Every read, during the run and of
/// the whole disk afterwards, must return what the ledger allows (never stale data a later acknowledged operation
/// replaced, never another block's data), and an image must pass `check` cleanly afterwards.
/// </summary>
public sealed unsafe class ConcurrentChannelsTests(ITestOutputHelper output) : IDisposable
{
    private const int Threads = 4;
    private const int BlockSize = StampWorker.BlockSize;
    private readonly BackendFactory _factory = new();

    public static TheoryData<string> Kinds => ["image-direct", "image-4k-clusters", "image-4k-clusters-hot", "image-writeback", "file-direct", "nbd", "nbd-multiconn", "nbdkit"];

    [Theory]
    [MemberData(nameof(Kinds))]
    public void Overlapping_operations_from_several_channels_never_lose_or_misplace_acknowledged_data(string kind)
    {
        // "-hot": 64 clusters of 4 KiB shared by every thread, so discarded clusters are reused within milliseconds
        // (the case range locks exist for).
        bool hot = kind.EndsWith("-hot", StringComparison.Ordinal);
        var device = _factory.Create(hot ? kind[..^4] : kind, blockSize: BlockSize);
        string? imagePath = (device as ImageDisk)?.Image.Path;
        int sectors = (int)(device.Info.SizeBytes / StampLedger.SectorSize);
        var ledger = new StampLedger(sectors);
        // A small hot area: operations from different threads keep meeting on the same clusters.
        int hotBlocks = Math.Min((int)(device.Info.SizeBytes / BlockSize), hot ? 64 : 512);
        var failures = new List<string>();
        var workers = Enumerable.Range(0, Threads).Select(t => new Thread(() =>
        {
            try
            {
                new StampWorker(device, ledger, hotBlocks, seed: 1000 * t + kind.Length).Run(TimeSpan.FromSeconds(3));
            }
            catch (Exception e)
            {
                lock (failures) failures.Add(e.ToString());
            }
        })).ToList();
        workers.ForEach(w => w.Start());
        workers.ForEach(w => w.Join());
        Assert.Empty(failures);

        // Everything acknowledged, now read it all back through a fresh channel.
        using (var driver = new ChannelDriver(device))
        {
            Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.Flush, 0, 0));
            var all = new byte[hotBlocks * BlockSize];
            long submitted = ledger.Tick();
            Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, 0, all));
            ledger.RecordRead(all, 0, submitted, ledger.Tick());
        }
        device.Dispose();
        var violations = ledger.Violations();
        output.WriteLine($"{kind}: {ledger.ReadCount} sector reads checked, {violations.Count} violations");
        Assert.True(violations.Count == 0, string.Join("\n", violations));
        if (imagePath is not null)
        {
            var check = ImageChecker.Check(imagePath);
            Assert.True(check.Clean, $"check: {string.Join("; ", check.Remaining.Select(p => p.Message))}");
        }
    }

    public void Dispose() => _factory.Dispose();
}
