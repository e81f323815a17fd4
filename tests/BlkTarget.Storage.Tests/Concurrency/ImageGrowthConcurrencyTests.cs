using BlkTarget.Storage.Image;
using BlkTarget.Storage.Tests.Conformance;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit.Abstractions;

namespace BlkTarget.Storage.Tests.Concurrency;

/// <summary>
/// An image grows while several channels on several threads write, read, discard, write zeroes and flush all of its
/// clusters, so the clusters a growth moves are busy: every read must still return what the ledger allows, `check`
/// must be clean afterwards, and a power loss at any moment (the changes recorded as in <see cref="PowerLossTests"/>)
/// must leave one of the sizes the image had, no corruption and every flushed or FUA write.
/// </summary>
public sealed class ImageGrowthConcurrencyTests(ITestOutputHelper output) : IDisposable
{
    private const ulong Size = 4 << 20;
    private const int CrashPoints = 40;
    private static readonly ulong[] Steps = [16 << 20, 64 << 20, 256 << 20];
    private readonly string _dir = Directory.CreateDirectory(Path.Combine("/var/tmp", $"blkt-growconc-{Guid.NewGuid():N}")).FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void An_image_growing_under_concurrent_io_loses_and_misplaces_nothing()
    {
        string path = Path.Combine(_dir, "disk.bti");
        string initial = Path.Combine(_dir, "initial.bti");
        ImageFile.Create(path, Size, 4096);   // 1024 entries: every step moves data clusters
        File.Copy(path, initial);
        int blocks = (int)(Size / StampWorker.BlockSize);
        var ledger = new StampLedger((int)(Size / StampLedger.SectorSize));
        var log = new MediumLog(ledger);
        var failures = new List<string>();
        using (var disk = ImageDisk.Open(path, readOnly: false, StampWorker.BlockSize, directIo: true, NullLogger.Instance))
        {
            disk.Image.Recorder = log;
            var threads = Enumerable.Range(0, 3).Select(t => new Thread(() =>
            {
                try
                {
                    new StampWorker(disk, ledger, blocks, seed: 31 * t + 7).Run(TimeSpan.FromSeconds(2.5));
                }
                catch (Exception e)
                {
                    lock (failures) failures.Add(e.ToString());
                }
            })).ToList();
            threads.ForEach(t => t.Start());
            foreach (ulong size in Steps)
            {
                Thread.Sleep(400);
                disk.Resize(size);
                Assert.Equal(size, disk.Info.SizeBytes);
            }
            threads.ForEach(t => t.Join());
            Assert.Empty(failures);
            using var driver = new ChannelDriver(disk);
            Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.Flush, 0, 0));
            var all = new byte[Size];
            long submitted = ledger.Tick();
            Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, 0, all));
            ledger.RecordRead(all, 0, submitted, ledger.Tick());
        }
        var violations = ledger.Violations();
        output.WriteLine($"{ledger.ReadCount} sector reads checked, {violations.Count} violations");
        Assert.True(violations.Count == 0, string.Join("\n", violations));
        var check = ImageChecker.Check(path);
        Assert.True(check.Clean, $"check: {string.Join("; ", check.Remaining.Select(p => p.Message))}");
        Assert.Equal(Steps[^1], check.Header.VirtualSize);

        var outcome = PowerLossReplay.Run(log, ledger, initial, _dir, CrashPoints, Size, new Random(4242));
        Assert.True(outcome.VirtualSizes.Keys.All(s => s == Size || Steps.Contains(s)), $"sizes after power losses: {string.Join(", ", outcome.VirtualSizes.Keys)}");
        output.WriteLine($"{log.Count} recorded changes, {CrashPoints} power losses: sizes {string.Join(", ", outcome.VirtualSizes.OrderBy(s => s.Key).Select(s => $"{s.Key >> 20} MiB x{s.Value}"))}; {outcome.Leaks} with only leaked space");
    }
}
