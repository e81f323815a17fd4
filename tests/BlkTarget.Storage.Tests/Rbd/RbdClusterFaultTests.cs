using BlkTarget.Storage.Rbd;
using BlkTarget.Storage.Tests.Conformance;
using BlkTarget.Tests.Ceph;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlkTarget.Storage.Tests.Rbd;

/// <summary>Stops the cluster's only OSD, so nothing else may use the cluster meanwhile.</summary>
[CollectionDefinition("ceph-osd-fault", DisableParallelization = true)]
public sealed class CephOsdFaultCollection;

/// <summary>
/// The OSD dies under I/O and comes back. librbd's behaviour (rados_osd_op_timeout 0, its default): requests wait for
/// the OSD instead of failing; nothing completes while it is down, everything completes (successfully) once it is back,
/// and what was acknowledged reads back.
/// </summary>
[Collection("ceph-osd-fault")]
public sealed unsafe class RbdClusterFaultTests
{
    [Fact]
    public void Requests_wait_while_the_osd_is_down_and_complete_when_it_is_back()
    {
        string image = CephTestCluster.CreateImage(16);
        using var disk = RbdDisk.Open(new RbdDiskOptions { Pool = "rbd", Image = image, ConfPath = CephTestCluster.ConfPath }, NullLogger.Instance);
        using var driver = new ChannelDriver(disk);
        var before = Enumerable.Repeat((byte)1, 65536).ToArray();
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, 0, before));
        var during = Enumerable.Repeat((byte)2, 65536).ToArray();
        byte* buffer = (byte*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc(65536, 4096);
        try
        {
            during.CopyTo(new Span<byte>(buffer, 65536));
            var iov = new IoVec(buffer, 65536);
            CephTestCluster.StopOsd();
            ulong write;
            ulong read;
            try
            {
                write = driver.Begin(BlockOperation.Write, 1 << 20, 65536, &iov, 1);
                read = driver.Begin(BlockOperation.Flush, 0, 0);
                var deadline = DateTime.UtcNow.AddSeconds(4);
                while (DateTime.UtcNow < deadline)
                {
                    Assert.Null(driver.Result(write));
                    Assert.Null(driver.Result(read));
                    Thread.Sleep(20);
                }
                Assert.Equal(2, driver.Channel.InFlight);
            }
            finally
            {
                CephTestCluster.StartOsd();
            }
            Assert.Equal(BlockStatus.Ok, WaitLong(driver, write));
            Assert.Equal(BlockStatus.Ok, WaitLong(driver, read));
        }
        finally
        {
            System.Runtime.InteropServices.NativeMemory.AlignedFree(buffer);
        }
        var back = new byte[65536];
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, 1 << 20, back));
        Assert.Equal(during, back);
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, 0, back));
        Assert.Equal(before, back);
    }

    private static BlockStatus WaitLong(ChannelDriver driver, ulong tag)
    {
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (driver.Result(tag) is not { } status)
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException("the request never completed after the OSD came back");
            Thread.Sleep(5);
        }
        return driver.Wait(tag);
    }
}
