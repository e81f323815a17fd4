using System.Diagnostics;
using BlkTarget.CrashWriter;
using BlkTarget.Storage.Image;
using BlkTarget.Storage.Tests.Conformance;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit.Abstractions;

namespace BlkTarget.Storage.Tests.Crash;

/// <summary>
/// Crash safety of the sparse image: a child process writes, discards and flushes on one, two or four queues
/// (threads with their own channels, as reactors serve one disk) while it is killed with
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
            int queues = round % 3 == 0 ? 1 : round % 3 == 1 ? 2 : 4;
            string image = Path.Combine(_dir, $"round{round}.bti");
            string journal = Path.Combine(_dir, $"round{round}.journal");
            ImageFile.Create(image, CrashWorkload.DiskSize, (uint)clusterSize);
            bool killed = RunAndKill(image, journal, seed, queues, killAfterMs: random.Next(20, 600));
            if (killed) killedMidway++;
            var check = ImageChecker.Check(image);
            Assert.True(check.Clean, $"round {round} seed {seed} ({queues} queues): check found {string.Join("; ", check.Remaining.Select(p => p.Message))}");
            Verify(image, seed, queues, Timeline.Read(journal), round);
            File.Delete(image);
            File.Delete(journal);
        }
        output.WriteLine($"{rounds} rounds, {killedMidway} killed mid-run");
        Assert.True(killedMidway > rounds / 2, $"only {killedMidway} of {rounds} rounds were killed before finishing: the kill test tests little");
    }

    private bool RunAndKill(string image, string journal, int seed, int queues, int killAfterMs)
    {
        string writer = Path.Combine(AppContext.BaseDirectory, "BlkTarget.CrashWriter.dll");
        var info = new ProcessStartInfo("dotnet") { RedirectStandardError = true };
        foreach (var a in new[] { writer, image, journal, seed.ToString(), OperationsPerRound.ToString(), queues.ToString() }) info.ArgumentList.Add(a);
        using var process = Process.Start(info)!;
        bool exited = process.WaitForExit(killAfterMs + 300);   // the runtime needs ~300 ms to start
        if (!exited) process.Kill();                           // SIGKILL: no cleanup code runs
        process.WaitForExit();
        if (exited) Assert.True(process.ExitCode == 0, $"writer failed: {process.StandardError.ReadToEnd()}");
        return !exited;
    }

    /// <summary>Where each event of the journal stands in its order: submissions, completions, flushes.</summary>
    private sealed class Timeline
    {
        public readonly Dictionary<int, int> Submitted = [];
        public readonly Dictionary<int, int> Completed = [];
        /// <summary>Operations completed before this line are durable: a flush submitted there completed.</summary>
        public int DurableBefore;

        public static Timeline Read(string journal)
        {
            var t = new Timeline();
            var flushSubmitted = new Dictionary<int, int>();
            string[] lines = File.Exists(journal) ? File.ReadAllLines(journal) : [];
            for (int i = 0; i < lines.Length; i++)
            {
                if (lines[i].Length < 3 || !int.TryParse(lines[i].AsSpan(2), out int seq)) continue;   // a line cut by the kill
                switch (lines[i][0])
                {
                    case 'B': t.Submitted[seq] = i; break;
                    case 'C': t.Completed[seq] = i; break;
                    case 'S': flushSubmitted[seq] = i; break;
                    case 'F': if (flushSubmitted.TryGetValue(seq, out int s)) t.DurableBefore = Math.Max(t.DurableBefore, s); break;
                }
            }
            return t;
        }

        public int CompletedAt(int seq) => Completed.TryGetValue(seq, out int i) ? i : int.MaxValue;
        public bool IsDurable(int seq) => CompletedAt(seq) < DurableBefore;
    }

    /// <summary>
    /// Every block must hold what some submitted operation X left there (zeros: nothing, or a discard), where no
    /// durable operation on that block (completed before a completed flush was submitted, on any queue) was
    /// submitted after X completed: the last flushed data or something newer, never older, never torn or foreign.
    /// </summary>
    private static unsafe void Verify(string image, int seed, int queues, Timeline timeline, int round)
    {
        // Opening validates the whole map: no entry out of range, no physical cluster mapped twice.
        using var disk = ImageDisk.Open(image, readOnly: true, blockSize: 512, directIo: true, NullLogger.Instance);
        using var driver = new ChannelDriver(disk);
        var setters = new List<(int Sequence, int Value)>[CrashWorkload.Blocks];
        for (int b = 0; b < setters.Length; b++) setters[b] = [(0, 0)];   // the initial zeros, "completed" at once
        foreach (var op in CrashWorkload.GenerateAll(seed, OperationsPerRound, queues))
        {
            if (op.Kind == CrashWorkload.Kind.Flush || !timeline.Submitted.ContainsKey(op.Sequence)) continue;
            for (int b = op.FirstBlock; b < op.FirstBlock + op.BlockCount; b++)
                setters[b].Add((op.Sequence, op.Kind == CrashWorkload.Kind.Write ? op.Sequence : 0));
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
            var candidates = setters[b];
            bool acceptable = candidates.Any(x => x.Value == found &&
                !candidates.Any(y => y.Sequence != 0 && timeline.IsDurable(y.Sequence) && timeline.Submitted[y.Sequence] > (x.Sequence == 0 ? -1 : timeline.CompletedAt(x.Sequence))));
            Assert.True(acceptable, $"round {round} seed {seed} ({queues} queues): block {b} holds op {found}, which a flushed later operation had replaced (durable before journal line {timeline.DurableBefore})");
        }
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);
}
