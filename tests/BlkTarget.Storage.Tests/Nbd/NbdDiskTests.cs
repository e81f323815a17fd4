using BlkTarget.Storage.Nbd;
using BlkTarget.Storage.Tests.Conformance;
using BlkTarget.Tests.Nbd;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlkTarget.Storage.Tests.Nbd;

/// <summary>What the nbd backend does beyond the conformance suite: it advertises only what the server can do, it uses
/// one connection without multi-conn and several with it, and it survives its server dying and coming back.</summary>
public sealed unsafe class NbdDiskTests
{
    private const ulong Size = 8 << 20;

    [Fact]
    public void Capabilities_the_server_lacks_are_not_advertised_and_their_requests_never_reach_it()
    {
        // An nbdkit eval plugin over a file that can read and write, but neither flush, trim, zero nor FUA (nbdkit
        // emulates zeroing with writes unless the nozero filter says none).
        using var server = NbdTestServer.StartNbdkit(1 << 20, file => ["--filter=nozero", "eval", "zeromode=none", "get_size=echo 1048576",
            $"pread=dd if={file} skip=$4 count=$3 iflag=skip_bytes,count_bytes status=none",
            $"pwrite=dd of={file} seek=$4 conv=notrunc oflag=seek_bytes status=none",
            "can_write=exit 0", "can_flush=exit 3", "can_trim=exit 3", "can_zero=exit 3", "can_fua=echo none", "can_multi_conn=exit 3"]);
        using var disk = NbdDisk.Open(new NbdDiskOptions { Uri = server.Uri }, NullLogger.Instance);
        Assert.False(disk.Info.SupportsDiscard, "discard");
        Assert.False(disk.Info.SupportsWriteZeroes, "write zeroes");
        Assert.False(disk.Info.HasVolatileCache, "volatile cache");
        Assert.False(disk.MultiConn);
        Assert.Equal(1, disk.Connections);
        using var driver = new ChannelDriver(disk);
        var data = Enumerable.Range(0, 8192).Select(i => (byte)(i * 7)).ToArray();
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, 4096, data, pieces: 2, flags: BlockRequestFlags.Fua));
        Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.Flush, 0, 0));      // nothing volatile to flush
        Assert.Equal(BlockStatus.Unsupported, driver.Run(BlockOperation.Discard, 0, 4096));
        Assert.Equal(BlockStatus.Unsupported, driver.Run(BlockOperation.WriteZeroes, 0, 4096));
        var back = new byte[data.Length];
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, 4096, back));
        Assert.Equal(data, back);
        Assert.Equal(data, File.ReadAllBytes(server.FilePath)[4096..(4096 + 8192)]);
    }

    [Fact]
    public void A_server_with_every_capability_gets_them_all_advertised()
    {
        using var server = NbdTestServer.Start(NbdTestServer.Kind.QemuNbd, Size, shared: 1);
        using var disk = NbdDisk.Open(new NbdDiskOptions { Uri = server.Uri, BlockSize = 4096 }, NullLogger.Instance);
        Assert.Equal(Size, disk.Info.SizeBytes);
        Assert.Equal(4096u, disk.Info.BlockSize);
        Assert.True(disk.Info.SupportsDiscard);
        Assert.True(disk.Info.SupportsWriteZeroes);
        Assert.True(disk.Info.HasVolatileCache);
        Assert.False(disk.MultiConn);
        Assert.Equal(1, disk.Connections);
    }

    [Fact]
    public void With_multi_conn_each_channel_gets_its_own_connection()
    {
        using var server = NbdTestServer.Start(NbdTestServer.Kind.QemuNbd, Size, shared: 8);
        using var disk = NbdDisk.Open(new NbdDiskOptions { Uri = server.Uri, Connections = 3 }, NullLogger.Instance);
        Assert.True(disk.MultiConn);
        Assert.Equal(3, disk.Connections);
        // Three channels (three reactors), each on its own socket; data written through one reads back through another
        // after a flush, which multi-conn promises covers every connection.
        using var a = new ChannelDriver(disk);
        using var b = new ChannelDriver(disk);
        using var c = new ChannelDriver(disk);
        var data = Enumerable.Range(0, 65536).Select(i => (byte)(i % 251)).ToArray();
        Assert.Equal(BlockStatus.Ok, a.Transfer(BlockOperation.Write, 1 << 20, data, pieces: 4));
        Assert.Equal(BlockStatus.Ok, a.Run(BlockOperation.Flush, 0, 0));
        var back = new byte[data.Length];
        Assert.Equal(BlockStatus.Ok, c.Transfer(BlockOperation.Read, 1 << 20, back));
        Assert.Equal(data, back);
        Assert.Equal(BlockStatus.Ok, b.Transfer(BlockOperation.Read, 1 << 20, back));
        Assert.Equal(data, back);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(4)]
    public void A_killed_server_fails_requests_with_ioerr_and_after_its_restart_the_disk_serves_again(int shared)
    {
        using var server = NbdTestServer.Start(NbdTestServer.Kind.QemuNbd, Size, shared: shared);
        using var disk = NbdDisk.Open(new NbdDiskOptions { Uri = server.Uri }, NullLogger.Instance);
        using var driver = new ChannelDriver(disk);
        var data = Enumerable.Range(0, 65536).Select(i => (byte)(i * 31)).ToArray();
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, 0, data));
        Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.Flush, 0, 0));

        // Requests in flight when the server dies: each completes, with Ok if its reply made it, else IOERR.
        var tags = Enumerable.Range(0, 32).Select(i => driver.Begin(BlockOperation.Flush, 0, 0)).ToList();
        server.Stop();
        foreach (var tag in tags) Assert.Contains(driver.Wait(tag), new[] { BlockStatus.Ok, BlockStatus.IoError });
        // Requests after the loss fail (the first may still be written into the dead socket, its reply never comes).
        var buffer = new byte[4096];
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (driver.Transfer(BlockOperation.Read, 0, buffer) == BlockStatus.Ok)
            Assert.True(DateTime.UtcNow < deadline, "reads kept succeeding with the server gone");
        Assert.Equal(BlockStatus.IoError, driver.Transfer(BlockOperation.Read, 0, buffer));
        Assert.Equal(BlockStatus.IoError, driver.Transfer(BlockOperation.Write, 0, buffer));
        Assert.Equal(0, driver.Channel.InFlight);

        server.Restart();
        deadline = DateTime.UtcNow.AddSeconds(15);
        var back = new byte[data.Length];
        while (driver.Transfer(BlockOperation.Read, 0, back) != BlockStatus.Ok)
        {
            Assert.True(DateTime.UtcNow < deadline, "the disk did not come back after the server restarted");
            Thread.Sleep(50);
        }
        Assert.Equal(data, back);
        Assert.True(disk.Reconnects >= 1);
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, 8192, buffer));
        Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.Flush, 0, 0));
    }

    [Fact]
    public void Requests_held_by_a_server_that_dies_fail_with_ioerr_and_nothing_stays_in_flight()
    {
        // nbdkit's delay filter holds every read for 3 s: the reads are surely in flight when the server is killed.
        using var server = NbdTestServer.StartNbdkit(Size, _ => ["--filter=delay", "memory", $"size={Size}", "rdelay=3"]);
        using var disk = NbdDisk.Open(new NbdDiskOptions { Uri = server.Uri }, NullLogger.Instance);
        using var driver = new ChannelDriver(disk);
        var buffers = new byte[8 * 4096];
        fixed (byte* p = buffers)
        {
            var iovs = stackalloc IoVec[8];
            var tags = new List<ulong>();
            for (int i = 0; i < 8; i++)
            {
                iovs[i] = new IoVec(p + i * 4096, 4096);
                tags.Add(driver.Begin(BlockOperation.Read, (ulong)i * 4096, 4096, &iovs[i], 1));
            }
            var until = DateTime.UtcNow.AddMilliseconds(300);
            while (DateTime.UtcNow < until) Assert.All(tags, t => Assert.Null(driver.Result(t)));    // sent, held by the server
            Assert.Equal(8, driver.Channel.InFlight);
            server.Stop();
            foreach (var tag in tags) Assert.Equal(BlockStatus.IoError, driver.Wait(tag));
        }
        Assert.Equal(0, driver.Channel.InFlight);
        server.Restart();
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (driver.Transfer(BlockOperation.Write, 0, new byte[4096]) != BlockStatus.Ok)
        {
            Assert.True(DateTime.UtcNow < deadline, "the disk did not come back after the server restarted");
            Thread.Sleep(50);
        }
    }

    [Fact]
    public void Scattered_iovecs_and_runs_longer_than_the_server_takes_become_several_commands_at_the_right_offsets()
    {
        // The server advertises (and enforces) a 64 KiB maximum: a 256 KiB run must be split into four commands.
        using var server = NbdTestServer.StartNbdkit(Size, _ => ["--filter=blocksize-policy", "memory", $"size={Size}",
            "blocksize-minimum=512", "blocksize-preferred=4096", "blocksize-maximum=65536", "blocksize-error-policy=error"]);
        using var disk = NbdDisk.Open(new NbdDiskOptions { Uri = server.Uri }, NullLogger.Instance);
        using var driver = new ChannelDriver(disk);
        var data = Enumerable.Range(0, 256 << 10).Select(i => (byte)(i * 7 + (i >> 12))).ToArray();
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, 1 << 20, data));
        var back = new byte[data.Length];
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, 1 << 20, back));
        Assert.Equal(data, back);

        // Three iovecs that are not adjacent in memory (the buffer's thirds in the order 2, 0, 1), one command each;
        // then read back through one iovec: the disk holds them in iovec order.
        var scattered = new byte[3 * 4096];
        new Random(4).NextBytes(scattered);
        fixed (byte* p = scattered)
        {
            var iovs = stackalloc IoVec[3];
            iovs[0] = new IoVec(p + 8192, 4096);
            iovs[1] = new IoVec(p, 4096);
            iovs[2] = new IoVec(p + 4096, 4096);
            Assert.Equal(BlockStatus.Ok, driver.RunWithBuffers(BlockOperation.Write, 4096, 3 * 4096, iovs, 3));
        }
        var read = new byte[3 * 4096];
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, 4096, read));
        Assert.Equal([.. scattered[8192..], .. scattered[..8192]], read);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Fua_goes_to_the_server_as_fua_or_as_a_flush_after_the_write_when_it_has_none(bool serverFua)
    {
        // nbdkit's log filter records every request the server gets. With FUA: the memory plugin; without: an eval plugin
        // over a file that can flush but has no FUA.
        string log = Path.Combine(Path.GetTempPath(), $"blkt-nbd-fua-{Guid.NewGuid():N}.log");
        try
        {
            using var server = NbdTestServer.StartNbdkit(Size, file => serverFua
                ? ["--filter=log", "memory", $"size={Size}", $"logfile={log}"]
                : ["--filter=log", "eval", $"logfile={log}", $"get_size=echo {Size}",
                    $"pread=dd if={file} skip=$4 count=$3 iflag=skip_bytes,count_bytes status=none",
                    $"pwrite=dd of={file} seek=$4 conv=notrunc oflag=seek_bytes status=none",
                    "can_write=exit 0", "can_flush=exit 0", "flush=exit 0", "can_fua=echo none", "can_trim=exit 3", "can_zero=exit 3"]);
            using var disk = NbdDisk.Open(new NbdDiskOptions { Uri = server.Uri }, NullLogger.Instance);
            Assert.True(disk.Info.HasVolatileCache);
            using (var driver = new ChannelDriver(disk))
                Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, 8192, new byte[4096], flags: BlockRequestFlags.Fua));
            // Entry lines read "connection=N Write id=I offset=... fua=F ..."; their exits "...Write id=I return=0".
            var requests = File.ReadAllLines(log).Where(l => l.Contains(" Write id=") || l.Contains(" Flush id=")).ToList();
            Assert.True(requests.Count(l => l.Contains(" Write id=") && l.Contains("offset=0x2000") && l.Contains(serverFua ? "fua=1" : "fua=0")) == 1,
                string.Join("\n", requests));
            Assert.True(requests.Count(l => l.Contains(" Flush id=")) == (serverFua ? 0 : 1), string.Join("\n", requests));
            if (!serverFua) Assert.Contains(" Flush id=", requests[^1]);       // after the write
        }
        finally
        {
            File.Delete(log);
        }
    }

    [Fact]
    public void An_unreachable_server_fails_the_open_with_one_sentence()
    {
        var e = Assert.Throws<IOException>(() => NbdDisk.Open(new NbdDiskOptions { Uri = "nbd+unix:///?socket=/nonexistent/nbd.sock" }, NullLogger.Instance));
        Assert.Contains("connecting failed", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }
}
