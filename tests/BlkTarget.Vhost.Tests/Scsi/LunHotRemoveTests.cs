using BlkTarget.Storage.Ram;
using BlkTarget.Vhost.Scsi;

namespace BlkTarget.Vhost.Tests.Scsi;

/// <summary>
/// Hot-removing a LUN with a command in flight on it (<see cref="ScsiDeviceContext.RemoveLun"/>): the LUN leaves the
/// table at once (new commands: LOGICAL UNIT NOT SUPPORTED), the removal waits until the queue's command completed
/// and then returns; a command that never completes makes it time out instead of closing the channel under it.
/// </summary>
public sealed class LunHotRemoveTests : IDisposable
{
    private readonly DeferringDisk _held = new(ScsiHarness.DiskBytes);
    private readonly ScsiHarness _scsi;

    public LunHotRemoveTests()
    {
        _scsi = new ScsiHarness(disks =>
        {
            var other = new RamDisk(ScsiHarness.DiskBytes);
            disks.Add(_held);
            disks.Add(other);
            return [new ScsiLunDefinition(0, 0, _held, "HELD"), new ScsiLunDefinition(0, 1, other, "OTHER")];
        });
    }

    public void Dispose()
    {
        while (_held.CompleteOne()) _scsi.Queue.Poll();
        _scsi.Dispose();
    }

    [Fact]
    public void Removal_waits_for_the_command_in_flight_and_new_commands_find_no_lun()
    {
        var write = _scsi.Start(Cdbs.Rw10(ScsiOp.Write10, 8, 1), dataOut: new byte[512]);   // LUN 0, held by the disk
        Assert.False(_scsi.IsDone(write));
        Exception? failure = null;
        var remove = new Thread(() =>
        {
            try { _scsi.Device.RemoveLun(0, 0, TimeSpan.FromSeconds(30)); }
            catch (Exception e) { failure = e; }
        });
        remove.Start();
        // The removal cannot finish while the write is in flight, however often the queue is polled.
        for (int i = 0; i < 50; i++)
        {
            Assert.False(_scsi.IsDone(write));
            Thread.Sleep(5);
        }
        Assert.True(remove.IsAlive, "the LUN was removed with a command still in flight on it");
        Assert.Null(_scsi.Device.FindTarget(0)!.Find(0));                                     // gone from the table at once
        _scsi.Run(Cdbs.Rw10(ScsiOp.Read10, 0, 1), dataIn: 512, lun: 1).AssertGood();          // the other LUN serves

        Assert.True(_held.CompleteOne());                                                     // the write lands
        Assert.True(SpinWait.SpinUntil(() => _scsi.IsDone(write) && !remove.IsAlive, TimeSpan.FromSeconds(10)));
        _scsi.Collect(write).AssertGood();
        Assert.Null(failure);
        _scsi.Run(Cdbs.Rw10(ScsiOp.Read10, 0, 1), dataIn: 512, lun: 0).AssertCheck(SenseCode.LunNotSupported);
    }

    [Fact]
    public void A_command_that_never_completes_makes_the_removal_time_out_and_keeps_its_channel()
    {
        var write = _scsi.Start(Cdbs.Rw10(ScsiOp.Write10, 8, 1), dataOut: new byte[512]);
        Exception? failure = null;
        var remove = new Thread(() =>
        {
            try { _scsi.Device.RemoveLun(0, 0, TimeSpan.FromMilliseconds(300)); }
            catch (Exception e) { failure = e; }
        });
        remove.Start();
        while (remove.IsAlive) _scsi.IsDone(write);
        Assert.IsType<TimeoutException>(failure);
        Assert.True(_held.CompleteOne());                                                     // still completes into its channel
        Assert.True(SpinWait.SpinUntil(() => _scsi.IsDone(write), TimeSpan.FromSeconds(10)));
        _scsi.Collect(write).AssertGood();
    }
}
