using System.Diagnostics;
using BlkTarget.CrashWriter;
using BlkTarget.Storage.Image;
using BlkTarget.Storage.Tests.Conformance;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit.Abstractions;

namespace BlkTarget.Storage.Tests.Crash;

/// <summary>
/// Crash safety of the sparse image: a child process writes, discards and flushes while it is killed with
/// SIGKILL at a random moment; afterwards `check` must find nothing (no corruption, no leaked space, no entry
/// past the end of the file) and every block must hold what the last flushed operation left there, or what a
/// later, unflushed operation wrote. Rounds are set by BLKTARGET_CRASH_ROUNDS (default 25).
/// </summary>
public sealed class ImageCrashTests(ITestOutputHelper output) : IDisposable
{
    private const int OperationsPerRound = 4000;
    private readonly string _dir = Directory.CreateDirectory(Path.Combine("/var/tmp", $"blkt-crash-{Guid.NewGuid():N}")).FullName;

    [Fact]
    public void Killed_writers_leave_consistent_images_with_every_flushed_write_intact()
    {
        int rounds = int.TryParse(Environment.GetEnvironmentVariable("BLKTARGET_CRASH_ROUNDS"), out int r) ? r : 25;
        var random = new Random(Environment.TickCount);
        int killedMidway = 0;
        for (int round = 0; round < rounds; round++)
        {
            int seed = random.Next();
            int clusterSize = round % 2 == 0 ? 4096 : 16384;
            string image = Path.Combine(_dir, $"round{round}.bti");
            string journal = Path.Combine(_dir, $"round{round}.journal");
            ImageFile.Create(image, CrashWorkload.DiskSize, (uint)clusterSize);
            bool killed = RunAndKill(image, journal, seed, killAfterMs: random.Next(20, 600));
            if (killed) killedMidway++;
            int flushed = LastFlush(journal);
            var check = ImageChecker.Check(image);
            Assert.True(check.Clean, $"round {round} seed {seed}: check found {string.Join("; ", check.Remaining.Select(p => p.Message))}");
            Verify(image, seed, flushed, round);
            File.Delete(image);
            File.Delete(journal);
        }
        output.WriteLine($"{rounds} rounds, {killedMidway} killed mid-run");
        Assert.True(killedMidway > rounds / 2, $"only {killedMidway} of {rounds} rounds were killed before finishing: the kill test tests little");
    }

    private bool RunAndKill(string image, string journal, int seed, int killAfterMs)
    {
        string writer = Path.Combine(AppContext.BaseDirectory, "BlkTarget.CrashWriter.dll");
        var info = new ProcessStartInfo("dotnet") { RedirectStandardError = true };
        foreach (var a in new[] { writer, image, journal, seed.ToString(), OperationsPerRound.ToString() }) info.ArgumentList.Add(a);
        using var process = Process.Start(info)!;
        bool exited = process.WaitForExit(killAfterMs + 300);   // the runtime needs ~300 ms to start
        if (!exited) process.Kill();                           // SIGKILL: no cleanup code runs
        process.WaitForExit();
        if (exited) Assert.True(process.ExitCode == 0, $"writer failed: {process.StandardError.ReadToEnd()}");
        return !exited;
    }

    private static int LastFlush(string journal)
    {
        if (!File.Exists(journal)) return 0;
        int last = 0;
        foreach (var line in File.ReadAllLines(journal))
            if (line.StartsWith("F ") && int.TryParse(line[2..], out int seq)) last = seq;
        return last;
    }

    private static unsafe void Verify(string image, int seed, int flushed, int round)
    {
        // Opening validates the whole map: no entry out of range, no physical cluster mapped twice.
        using var disk = ImageDisk.Open(image, readOnly: true, blockSize: 512, directIo: true, NullLogger.Instance);
        using var driver = new ChannelDriver(disk);
        var durable = new int[CrashWorkload.Blocks];            // sequence of the last flushed op per block; 0 = zeros
        var later = new HashSet<(int Block, int Sequence)>();   // unflushed ops that may or may not have landed
        foreach (var op in CrashWorkload.Generate(seed, OperationsPerRound))
        {
            if (op.Kind == CrashWorkload.Kind.Flush) continue;
            for (int b = op.FirstBlock; b < op.FirstBlock + op.BlockCount; b++)
            {
                int value = op.Kind == CrashWorkload.Kind.Write ? op.Sequence : 0;
                if (op.Sequence <= flushed) durable[b] = value;
                else later.Add((b, value));
            }
        }
        var data = new byte[CrashWorkload.BlockSize];
        var expected = new byte[CrashWorkload.BlockSize];
        for (int b = 0; b < CrashWorkload.Blocks; b++)
        {
            Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, (ulong)b * CrashWorkload.BlockSize, data));
            int found = data.AsSpan().IndexOfAnyExcept((byte)0) < 0 ? 0 : BitConverter.ToInt32(data, 0);
            if (found != 0)
            {
                CrashWorkload.Fill(expected, found, b);
                Assert.True(data.AsSpan().SequenceEqual(expected), $"round {round} seed {seed}: block {b} holds a torn or foreign block (first word {found})");
            }
            bool acceptable = found == durable[b] || later.Contains((b, found));
            Assert.True(acceptable, $"round {round} seed {seed}: block {b} holds op {found}, but the last flushed op (flush at {flushed}) left {durable[b]}");
        }
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);
}
