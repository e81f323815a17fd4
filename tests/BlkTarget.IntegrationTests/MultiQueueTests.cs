using BlkTarget.Vhost.Frontend;
using Xunit.Abstractions;
using static BlkTarget.IntegrationTests.TestData;

namespace BlkTarget.IntegrationTests;

public sealed class MultiQueueTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData(2, 1)]
    [InlineData(2, 2)]
    [InlineData(4, 2)]
    public void QueuesDrivenFromSeparateThreadsEachSeeTheirOwnData(int queues, int reactors)
    {
        using var target = new TestTarget(output, new TargetSpec { Queues = queues, Reactors = reactors, SizeBytes = 64 << 20 });
        using var guest = TestGuest.Connect(target.SocketPath, queues: queues, queueSize: 64, arenaBytes: 32 << 20);
        const int requestsPerQueue = 300;
        const uint size = 8192;
        var regionSectors = (64UL << 20) / 512 / (ulong)queues;
        var buffers = Enumerable.Range(0, queues).Select(_ => Enumerable.Range(0, 16).Select(_ => guest.Allocate(size)).ToArray()).ToArray();

        var errors = new Exception?[queues];
        var threads = Enumerable.Range(0, queues).Select(q => new Thread(() =>
        {
            try
            {
                Drive(guest.Blk[q], buffers[q], regionSectors * (ulong)q, seedBase: q * 100_000, requestsPerQueue);
            }
            catch (Exception e)
            {
                errors[q] = e;
            }
        })).ToArray();
        foreach (var t in threads) t.Start();
        foreach (var t in threads) Assert.True(t.Join(TimeSpan.FromSeconds(30)), "a queue thread hung");
        foreach (var e in errors) Assert.Null(e);
    }

    /// <summary>Writes <paramref name="count"/> blocks with up to 16 in flight, then reads each back and checks it.</summary>
    private static void Drive(BlkRequestQueue blk, GuestBuffer[] buffers, ulong firstSector, int seedBase, int count)
    {
        const uint size = 8192;
        for (int phase = 0; phase < 2; phase++)
        {
            bool write = phase == 0;
            int next = 0, completed = 0;
            var freeBuffers = new Stack<int>(Enumerable.Range(0, buffers.Length));
            var owner = new int[buffers.Length];
            while (completed < count)
            {
                while (next < count && freeBuffers.Count > 0)
                {
                    int b = freeBuffers.Peek();
                    if (write) Fill(buffers[b].Span, seedBase + next);
                    else buffers[b].Span.Clear();
                    ulong sector = firstSector + (ulong)next * (size / 512);
                    if (!blk.TrySubmit(write ? BlkRequestType.Out : BlkRequestType.In, sector, [buffers[b]], (ulong)b)) break;
                    freeBuffers.Pop();
                    owner[b] = next++;
                }
                blk.Kick();
                if (!blk.Queue.WaitForUsed(10_000)) throw new TimeoutException($"queue {blk.Queue.Index}: no completion");
                while (blk.TryComplete(out var c))
                {
                    if (c.Status != 0) throw new InvalidOperationException($"queue {blk.Queue.Index}: status {c.Status}");
                    int b = (int)c.Token;
                    if (!write && !buffers[b].Span.SequenceEqual(Random((int)size, seedBase + owner[b])))
                        throw new InvalidOperationException($"queue {blk.Queue.Index}: block {owner[b]} read back wrong data");
                    freeBuffers.Push(b);
                    completed++;
                }
            }
        }
    }
}
