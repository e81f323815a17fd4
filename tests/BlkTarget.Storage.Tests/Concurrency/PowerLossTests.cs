using BlkTarget.Storage.Image;
using BlkTarget.Storage.Tests.Conformance;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit.Abstractions;

namespace BlkTarget.Storage.Tests.Concurrency;

/// <summary>
/// Power-loss simulation of the image backend. Several channels on several threads write, discard, write zeroes
/// (some FUA) and flush overlapping clusters while every change to the image file is recorded. Then, for many
/// random moments, the file a power loss could leave is built (changes a completed sync covers are kept; of the
/// rest a random subset, writes torn at 4 KiB) and must open, show no corruption in `check`, and hold every
/// acknowledged write that a completed flush covered (or FUA made durable), never an older or a foreign block.
/// </summary>
public sealed class PowerLossTests(ITestOutputHelper output) : IDisposable
{
    private const ulong Size = 4 << 20;
    private const int CrashPoints = 40;
    private readonly string _dir = Directory.CreateDirectory(Path.Combine("/var/tmp", $"blkt-powerloss-{Guid.NewGuid():N}")).FullName;

    [Theory]
    [InlineData(4096u)]
    [InlineData(65536u)]
    public void Any_power_loss_leaves_an_image_that_opens_and_holds_every_flushed_or_fua_write(uint clusterSize)
    {
        string path = Path.Combine(_dir, "disk.bti");
        string initial = Path.Combine(_dir, "initial.bti");
        ImageFile.Create(path, Size, clusterSize);
        File.Copy(path, initial);
        int sectors = (int)(Size / StampLedger.SectorSize);
        var ledger = new StampLedger(sectors);
        var log = new MediumLog(ledger);
        using (var disk = ImageDisk.Open(path, readOnly: false, StampWorker.BlockSize, directIo: true, NullLogger.Instance))
        {
            disk.Image.Recorder = log;
            var failures = new List<string>();
            var threads = Enumerable.Range(0, 3).Select(t => new Thread(() =>
            {
                try
                {
                    new StampWorker(disk, ledger, (int)(Size / StampWorker.BlockSize), seed: 77 * t + (int)clusterSize).Run(TimeSpan.FromSeconds(1.5));
                }
                catch (Exception e)
                {
                    lock (failures) failures.Add(e.ToString());
                }
            })).ToList();
            threads.ForEach(t => t.Start());
            threads.ForEach(t => t.Join());
            Assert.Empty(failures);
        }
        var outcome = PowerLossReplay.Run(log, ledger, initial, _dir, CrashPoints, Size, new Random((int)clusterSize));
        output.WriteLine($"{log.Count} recorded changes, {CrashPoints} power losses, {outcome.Optional} optional changes ({outcome.Kept} kept), {outcome.Leaks} images with only leaked space");
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);
}
