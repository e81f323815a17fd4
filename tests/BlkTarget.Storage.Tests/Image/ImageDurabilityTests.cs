using System.Runtime.InteropServices;
using BlkTarget.Storage.Image;
using BlkTarget.Storage.Tests.Conformance;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlkTarget.Storage.Tests.Image;

/// <summary>
/// The image's durability bookkeeping and its metadata thread: what a flush makes reusable is decided by what
/// was written when it started (whatever order flushes complete in), write-through writes do not complete before
/// the metadata naming their clusters is durable, deallocated space comes back without flushes, and metadata
/// work never holds up a reactor.
/// </summary>
public sealed unsafe class ImageDurabilityTests : IDisposable
{
    private readonly string _dir = Directory.CreateDirectory(Path.Combine("/var/tmp", $"blkt-dur-{Guid.NewGuid():N}")).FullName;

    private string NewImage(uint cluster = 4096, ulong size = 8 << 20)
    {
        string path = Path.Combine(_dir, $"{Guid.NewGuid():N}.bti");
        ImageFile.Create(path, size, cluster);
        return path;
    }

    [Fact]
    public void A_flush_frees_only_what_was_unmapped_before_it_started_whatever_order_flushes_complete_in()
    {
        using var image = ImageFile.Open(NewImage(), readOnly: false, directIo: false);
        image.AllocateRun(0, 3);
        image.Deallocate(0, 1);
        long flush1 = image.MetadataVersion;     // flush 1 starts
        image.Deallocate(1, 1);
        long flush2 = image.MetadataVersion;     // flush 2 starts
        image.MarkDurable(flush2);               // flush 2 completes first: clusters of 0 and 1 may be reused
        image.Deallocate(2, 1);                  // after both flushes started: only a later flush covers it
        image.MarkDurable(flush1);               // flush 1 completes last
        Assert.Equal(2UL, image.FreeClusters);
        image.MarkDurable(image.MetadataVersion);   // a third flush, started after the last unmapping
        Assert.Equal(3UL, image.FreeClusters);
    }

    [Fact]
    public void A_fua_write_that_allocates_completes_only_after_the_map_is_durable()
    {
        using var disk = ImageDisk.Open(NewImage(), readOnly: false, 512, directIo: true, NullLogger.Instance);
        using var driver = new ChannelDriver(disk);
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, 0, new byte[4096]));
        Assert.True(disk.Image.DurableVersion < disk.Image.MetadataVersion, "a plain write's allocation waits for a flush");
        var data = new byte[8192];
        data.AsSpan().Fill(0x5A);
        Assert.Equal(BlockStatus.Ok, Write(driver, 1 << 20, data, BlockRequestFlags.Fua));
        Assert.Equal(disk.Image.MetadataVersion, disk.Image.DurableVersion);
    }

    [Fact]
    public void Without_any_flush_deallocated_clusters_become_reusable_instead_of_growing_the_file()
    {
        using var disk = ImageDisk.Open(NewImage(), readOnly: false, 512, directIo: true, NullLogger.Instance);
        disk.Image.ReclaimSyncAfterMs = 0;
        using var driver = new ChannelDriver(disk);
        var data = new byte[4096];
        Assert.Equal(BlockStatus.Ok, Write(driver, 0, data, BlockRequestFlags.Fua));
        ulong first = disk.Image.Entry(0);
        Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.Discard, 0, 4096));
        Assert.Equal(BlockStatus.Ok, Write(driver, 4096, data, BlockRequestFlags.Fua));   // a write-through guest: no flush ever
        Assert.Equal(first, disk.Image.Entry(1));
    }

    [Fact]
    public void A_reactor_is_not_held_up_while_the_metadata_thread_works()
    {
        using var disk = ImageDisk.Open(NewImage(), readOnly: false, 512, directIo: true, NullLogger.Instance);
        using var driver = new ChannelDriver(disk);
        var data = new byte[4096];
        data.AsSpan().Fill(7);
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, 1 << 20, data));
        using var gate = new ManualResetEventSlim();
        disk.Worker.BeforeJob = () => gate.Wait(TimeSpan.FromSeconds(20));
        // A big discard and a write needing allocation go to the (stuck) metadata thread: Submit must return
        // at once, and a read of allocated data on the same channel must still complete.
        ulong discard = driver.Begin(BlockOperation.Discard, 2 << 20, 4 << 20);
        ulong allocating = Begin(driver, BlockOperation.Write, 0, data, out nint buffer);
        var back = new byte[4096];
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, 1 << 20, back));
        Assert.Equal(data, back);
        Assert.Null(driver.Result(discard));
        Assert.Null(driver.Result(allocating));
        gate.Set();
        Assert.Equal(BlockStatus.Ok, driver.Wait(discard));
        Assert.Equal(BlockStatus.Ok, driver.Wait(allocating));
        NativeMemory.AlignedFree((void*)buffer);
    }

    [Fact]
    public void An_allocation_whose_second_map_block_cannot_be_written_never_leaves_a_cluster_named_twice()
    {
        // A small tmpfs: the map area is a hole, so writing a map block needs space; fill the file system, then
        // allocate clusters 511 and 512 (map blocks 0 and 1): block 0 is written, block 1 fails with ENOSPC.
        string mount = Path.Combine(_dir, "tmpfs");
        Directory.CreateDirectory(mount);
        Run("mount", $"-t tmpfs -o size=2m tmpfs {mount}");
        try
        {
            string path = Path.Combine(mount, "disk.bti");
            ImageFile.Create(path, 4 << 20, 4096);
            using (var disk = ImageDisk.Open(path, readOnly: false, 512, directIo: false, NullLogger.Instance))
            using (var driver = new ChannelDriver(disk))
            {
                var block = new byte[8192];
                block.AsSpan().Fill(0x11);
                Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, 0, block.AsSpan(0, 4096)));
                string filler = Path.Combine(mount, "filler");
                using (var f = File.Create(filler))
                {
                    var chunk = new byte[4096];
                    try { while (true) f.Write(chunk); }
                    catch (IOException) { }
                }
                Assert.NotEqual(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, 511 * 4096, block));
                File.Delete(filler);
                // Clusters the failed allocation took must not be reused for another map block's entry.
                Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, 600 * 4096, block));
                Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.Flush, 0, 0));
            }
            var check = ImageChecker.Check(path);
            Assert.False(check.HasCorruption, string.Join("; ", check.Remaining.Select(p => p.Message)));
        }
        finally
        {
            Run("umount", mount);
        }
    }

    [Fact]
    public void One_batch_of_allocations_writes_each_changed_map_block_once_and_adjacent_blocks_together()
    {
        // 16 MiB, 4 KiB clusters: the map starts at file offset 4096 (docs/image-format.md: map offset = C), map
        // block b (entries 512b..512b+511) at 4096 + 4096b. Clusters 3 and 7 are in block 0, 600 in block 1, 2600 in block 5.
        using var image = ImageFile.Open(NewImage(4096, 16 << 20), readOnly: false, directIo: false);
        var recorder = new MapWriteRecorder(4096, 4096 * 8);
        image.Recorder = recorder;

        image.AllocateRuns([(3, 1), (600, 1), (7, 1), (2600, 1)]);

        Assert.Equal([(4096UL, 8192UL), (4096UL + 5 * 4096, 4096UL)], recorder.Writes);
        foreach (ulong v in new ulong[] { 3, 7, 600, 2600 }) Assert.NotEqual(0UL, image.Entry(v));
        Assert.Equal(0UL, image.Entry(4));
        Assert.Equal(4UL, image.AllocatedClusters);
    }

    [Fact]
    public void Allocations_that_queue_up_while_the_metadata_thread_is_busy_share_their_map_write()
    {
        using var disk = ImageDisk.Open(NewImage(), readOnly: false, 512, directIo: true, NullLogger.Instance);
        var recorder = new MapWriteRecorder(4096, disk.Image.Header.MapBytes);
        disk.Image.Recorder = recorder;
        using var driver = new ChannelDriver(disk);
        using var gate = new ManualResetEventSlim();
        int jobs = 0;
        disk.Worker.BeforeJob = () => { if (Interlocked.Increment(ref jobs) == 1) gate.Wait(TimeSpan.FromSeconds(20)); };
        // 16 writes into 16 new clusters of map block 0: the first holds the metadata thread while the others queue.
        const int Writes = 16;
        var tags = new ulong[Writes];
        var buffers = new nint[Writes];
        for (int i = 0; i < Writes; i++)
        {
            var data = new byte[4096];
            data.AsSpan().Fill((byte)(i + 1));
            tags[i] = Begin(driver, BlockOperation.Write, (ulong)i * 4096, data, out buffers[i]);
        }
        gate.Set();
        for (int i = 0; i < Writes; i++) Assert.Equal(BlockStatus.Ok, driver.Wait(tags[i]));
        foreach (nint buffer in buffers) NativeMemory.AlignedFree((void*)buffer);

        // One map write per request would be 16 (what it was before batching).
        Assert.InRange(recorder.Writes.Count, 1, 2);
        var back = new byte[4096];
        for (int i = 0; i < Writes; i++)
        {
            Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, (ulong)i * 4096, back));
            Assert.True(back.AsSpan().IndexOfAnyExcept((byte)(i + 1)) < 0, $"cluster {i} does not hold its own write");
        }
        Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.Flush, 0, 0));
    }

    /// <summary>Records the writes that land in the map area [mapOffset, mapOffset + mapBytes) as (offset, length).</summary>
    private sealed class MapWriteRecorder(ulong mapOffset, ulong mapBytes) : Transfer.IMediumRecorder
    {
        public List<(ulong Offset, ulong Length)> Writes { get; } = [];

        public void Wrote(ulong fileOffset, IoVec* iov, int iovCount, ulong length, bool durable)
        {
            if (fileOffset >= mapOffset && fileOffset < mapOffset + mapBytes)
                lock (Writes) Writes.Add((fileOffset, length));
        }

        public void Punched(ulong fileOffset, ulong length) { }
        public void Resized(ulong size) { }
        public long SyncStarted() => 0;
        public void SyncCompleted(long token) { }
    }

    private static void Run(string command, string arguments)
    {
        using var process = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo(command, arguments) { RedirectStandardError = true })!;
        process.WaitForExit();
        Assert.True(process.ExitCode == 0, $"{command} {arguments}: {process.StandardError.ReadToEnd()}");
    }

    private static BlockStatus Write(ChannelDriver driver, ulong offset, byte[] data, BlockRequestFlags flags)
    {
        ulong tag = Begin(driver, BlockOperation.Write, offset, data, out nint buffer, flags);
        try
        {
            return driver.Wait(tag);
        }
        finally
        {
            NativeMemory.AlignedFree((void*)buffer);
        }
    }

    /// <summary>Starts a write from an aligned native copy of <paramref name="data"/> (freed by the caller) and its iovec.</summary>
    private static ulong Begin(ChannelDriver driver, BlockOperation operation, ulong offset, byte[] data, out nint buffer, BlockRequestFlags flags = 0)
    {
        byte* p = (byte*)NativeMemory.AlignedAlloc((nuint)data.Length + (nuint)sizeof(IoVec), 4096);
        data.CopyTo(new Span<byte>(p, data.Length));
        var iov = (IoVec*)(p + data.Length);
        *iov = new IoVec(p, (nuint)data.Length);
        buffer = (nint)p;
        return driver.Begin(operation, offset, (ulong)data.Length, iov, 1, flags);
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);
}
