using BlkTarget.Storage.Ram;
using BlkTarget.Vhost.Qos;
using BlkTarget.Vhost.Queues;
using BlkTarget.Vhost.Scsi;
using BlkTarget.Vhost.Tests.Scsi;

namespace BlkTarget.Vhost.Tests.Qos;

/// <summary>A scsi request queue under its LUN's disk limit.</summary>
public sealed class ScsiQueueQosTests
{
    [Fact]
    public void Reads_over_the_disk_limit_are_held_and_other_commands_of_the_lun_are_not_counted()
    {
        var limiter = new QosLimiter();
        limiter.Set(new QosLimits { ReadIops = 20, BurstMilliseconds = 50 });   // one token, the next 50 ms later
        using var h = new ScsiHarness(disks =>
        {
            var disk = new RamDisk(1 << 20);
            disks.Add(disk);
            return [new ScsiLunDefinition(0, 0, disk, "SERIAL-0", DiskQos: limiter)];
        });
        ushort next = 0;
        void Offer(byte[] cdb, bool read)
        {
            ulong req = h.Ring.Allocate(51);
            var r = h.Ring.Bytes(req, 51);
            r.Clear();
            ScsiHarness.Lun(0, 0).CopyTo(r);
            cdb.CopyTo(r[19..]);
            ulong resp = h.Ring.Allocate(108);
            ushort head = next;
            if (read)
            {
                h.Ring.SetDescriptor(next++, req, 51, VirtqDescriptor.FlagNext, (ushort)next);
                h.Ring.SetDescriptor(next++, resp, 108, VirtqDescriptor.FlagWrite | VirtqDescriptor.FlagNext, (ushort)next);
                h.Ring.SetDescriptor(next++, h.Ring.Allocate(4096), 4096, VirtqDescriptor.FlagWrite);
            }
            else
            {
                h.Ring.SetDescriptor(next++, req, 51, VirtqDescriptor.FlagNext, (ushort)next);
                h.Ring.SetDescriptor(next++, resp, 108, VirtqDescriptor.FlagWrite);
            }
            h.Ring.MakeAvailable(head);
        }
        var testUnitReady = new byte[6];
        Offer(Cdbs.Rw10(ScsiOp.Read10, 0, 8), read: true);
        Offer(testUnitReady, read: false);
        Offer(Cdbs.Rw10(ScsiOp.Read10, 8, 8), read: true);
        Offer(testUnitReady, read: false);
        h.Queue.Poll();
        // The first read took the token, TEST UNIT READY takes none, the second read waits in its slot, and the
        // command after it stays in the ring.
        Assert.Equal(2, h.Ring.UsedIdx);
        Assert.Equal(3, h.Queue.LastAvailIdx);
        Assert.NotEqual(0, h.Queue.ThrottledUntil);
        for (int i = 0; i < 100; i++) h.Queue.Poll();
        Assert.Equal(2, h.Ring.UsedIdx);
        Thread.Sleep(60);
        h.Queue.Poll();
        Assert.Equal(4, h.Ring.UsedIdx);
        Assert.Equal(0, h.Queue.ThrottledUntil);
    }
}
