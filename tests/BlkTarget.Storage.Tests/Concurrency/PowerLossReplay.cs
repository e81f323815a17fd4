using BlkTarget.Storage.Image;
using BlkTarget.Storage.Tests.Conformance;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlkTarget.Storage.Tests.Concurrency;

/// <summary>
/// Replays power losses at random moments of a recorded stamp-ledger run: each crash image (built from the file as it
/// was before the run) must show no corruption in `check` and hold every write a completed flush or FUA made durable
/// in its first <paramref name="bytes"/> bytes, never an older or a foreign block.
/// </summary>
internal static class PowerLossReplay
{
    public sealed record Outcome(int Optional, int Kept, int Leaks, Dictionary<ulong, int> VirtualSizes);

    public static Outcome Run(MediumLog log, StampLedger ledger, string initial, string dir, int crashPoints, ulong bytes, Random random)
    {
        long end = ledger.Now;
        int optional = 0, kept = 0, leaks = 0;
        var sizes = new Dictionary<ulong, int>();
        for (int point = 0; point < crashPoints; point++)
        {
            long crash = point == crashPoints - 1 ? end : random.NextInt64(1, end);
            string crashed = Path.Combine(dir, $"crash{point}.bti");
            File.Copy(initial, crashed);
            var (o, k) = log.BuildCrashImage(crashed, crash, random);
            optional += o;
            kept += k;
            var check = ImageChecker.Check(crashed);
            Assert.False(check.HasCorruption, $"power loss at {crash}: {string.Join("; ", check.Remaining.Select(p => p.Message))}");
            if (!check.Clean) leaks++;
            sizes[check.Header.VirtualSize] = sizes.GetValueOrDefault(check.Header.VirtualSize) + 1;
            var contents = new byte[bytes];
            using (var image = ImageDisk.Open(crashed, readOnly: true, StampWorker.BlockSize, directIo: false, NullLogger.Instance))
            using (var driver = new ChannelDriver(image))
                Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, 0, contents));
            var violations = ledger.CrashViolations(contents, crash);
            Assert.True(violations.Count == 0, $"power loss at {crash} of {end}:\n{string.Join("\n", violations)}");
            File.Delete(crashed);
        }
        return new Outcome(optional, kept, leaks, sizes);
    }
}
