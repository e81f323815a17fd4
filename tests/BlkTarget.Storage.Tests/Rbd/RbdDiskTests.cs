using BlkTarget.Storage.Rbd;
using BlkTarget.Storage.Tests.Conformance;
using BlkTarget.Tests.Ceph;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlkTarget.Storage.Tests.Rbd;

/// <summary>What the rbd backend adds to the conformance suite: one connection per cluster, completions of several
/// reactors' channels on one image, growth from here and from outside, and open errors.</summary>
public sealed unsafe class RbdDiskTests
{
    private static RbdDisk Open(string image, bool writeback = false) => RbdDisk.Open(new RbdDiskOptions
    {
        Pool = "rbd", Image = image, ConfPath = CephTestCluster.ConfPath, Writeback = writeback,
    }, NullLogger.Instance);

    [Fact]
    public void Disks_of_one_cluster_share_one_connection_which_closes_with_the_last()
    {
        var first = Open(CephTestCluster.CreateImage(16));
        var second = Open(CephTestCluster.CreateImage(16));
        var cluster = first.Cluster;
        Assert.Same(cluster, second.Cluster);
        first.Dispose();
        Assert.False(cluster.Handle.IsClosed);
        second.Dispose();
        Assert.True(cluster.Handle.IsClosed);
    }

    [Fact]
    public void Disks_with_another_cache_mode_get_their_own_connection()
    {
        using var none = Open(CephTestCluster.CreateImage(16));
        using var writeback = Open(CephTestCluster.CreateImage(16), writeback: true);
        Assert.NotSame(none.Cluster, writeback.Cluster);
        Assert.False(none.Info.HasVolatileCache);
        Assert.True(writeback.Info.HasVolatileCache);
    }

    [Fact]
    public void Missing_images_and_pools_fail_to_open_with_one_clear_error()
    {
        var missing = Assert.Throws<IOException>(() => Open("no-such-image"));
        Assert.Contains("no-such-image", missing.Message);
        Assert.Contains("No such file or directory", missing.Message);
        var pool = Assert.Throws<IOException>(() => RbdDisk.Open(new RbdDiskOptions
        {
            Pool = "no-such-pool", Image = "x", ConfPath = CephTestCluster.ConfPath,
        }, NullLogger.Instance));
        Assert.Contains("no-such-pool", pool.Message);
    }

    [Fact]
    public void Channels_on_several_threads_each_get_their_own_completions()
    {
        // Two "reactors" (threads, each with its own I/O context) drive one image at depth 16; whichever polls the
        // image reaps the other's completions too and must hand them over.
        using var disk = Open(CephTestCluster.CreateImage(64));
        var errors = new List<string>();
        var threads = Enumerable.Range(0, 2).Select(t => new Thread(() =>
        {
            try
            {
                Drive(disk, (ulong)t * (16 << 20), seed: t);
            }
            catch (Exception e)
            {
                lock (errors) errors.Add(e.ToString());
            }
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        Assert.Empty(errors);
    }

    private static void Drive(RbdDisk disk, ulong area, int seed)
    {
        using var driver = new ChannelDriver(disk);
        const int Depth = 16, Block = 64 << 10;
        var random = new Random(seed);
        var buffers = new byte[Depth][];
        for (int round = 0; round < 8; round++)
        {
            var tags = new ulong[Depth];
            var pins = new System.Runtime.InteropServices.GCHandle[Depth];
            var iovs = new IoVec[Depth];
            for (int i = 0; i < Depth; i++)
            {
                buffers[i] = new byte[Block];
                random.NextBytes(buffers[i]);
                pins[i] = System.Runtime.InteropServices.GCHandle.Alloc(buffers[i], System.Runtime.InteropServices.GCHandleType.Pinned);
                iovs[i] = new IoVec((byte*)pins[i].AddrOfPinnedObject(), Block);
            }
            fixed (IoVec* iov = iovs)
            {
                for (int i = 0; i < Depth; i++) tags[i] = driver.Begin(BlockOperation.Write, area + (ulong)(i * Block), Block, iov + i, 1);
                for (int i = 0; i < Depth; i++) Assert.Equal(BlockStatus.Ok, driver.Wait(tags[i]));
            }
            foreach (var pin in pins) pin.Free();
            for (int i = 0; i < Depth; i++)
            {
                var back = new byte[Block];
                Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, area + (ulong)(i * Block), back));
                Assert.True(back.AsSpan().SequenceEqual(buffers[i]), $"round {round} block {i} differs");
            }
        }
        Assert.Equal(0, driver.Channel.InFlight);
    }

    [Fact]
    public void Resize_grows_the_image_and_the_new_end_is_usable()
    {
        string image = CephTestCluster.CreateImage(16);
        using var disk = Open(image);
        using var driver = new ChannelDriver(disk);
        Assert.Throws<ArgumentException>(() => disk.Resize(8 << 20));
        disk.Resize(32 << 20);
        Assert.Equal(32UL << 20, disk.Info.SizeBytes);
        Assert.Contains("32 MiB", CephTestCluster.Rbd($"info rbd/{image}"));
        var data = Enumerable.Repeat((byte)0xA5, 4096).ToArray();
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, (32 << 20) - 4096, data));
        var back = new byte[4096];
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, (32 << 20) - 4096, back));
        Assert.Equal(data, back);
    }

    [Fact]
    public void A_resize_made_outside_is_published_and_raised()
    {
        string image = CephTestCluster.CreateImage(16);
        using var disk = Open(image);
        using var raised = new ManualResetEventSlim();
        ulong seen = 0;
        disk.ExternallyResized += size =>
        {
            seen = size;
            raised.Set();
        };
        CephTestCluster.Rbd($"resize --size 48M rbd/{image}");
        Assert.True(raised.Wait(TimeSpan.FromSeconds(20)), "no size change arrived");
        Assert.Equal(48UL << 20, seen);
        Assert.Equal(48UL << 20, disk.Info.SizeBytes);
        using var driver = new ChannelDriver(disk);
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, (48 << 20) - 512, new byte[512]));
    }
}
