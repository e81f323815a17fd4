using System.Text;
using BlkTarget.Storage.Ram;
using BlkTarget.Vhost.Scsi;
using BlkTarget.Vhost.Scsi.Reservations;
using static BlkTarget.Vhost.Tests.Scsi.PersistentReservationTests;

namespace BlkTarget.Vhost.Tests.Scsi;

/// <summary>APTPL (SPC-4 5.14.5): the state reaches the sidecar file before the command completes and comes back
/// from it; a damaged file is refused.</summary>
public sealed class ReservationSidecarTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("bt-pr-").FullName;
    private readonly RamDisk _disk = new(ScsiHarness.DiskBytes);

    public void Dispose()
    {
        _disk.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    private string DiskPath => Path.Combine(_dir, "disk.img");

    private ScsiHarness Harness(SharedLogicalUnit lu, string name) => new(_ => [new ScsiLunDefinition(0, 0, _disk, "S", Shared: lu)], name: name);

    [Fact]
    public void Aptpl_state_is_written_next_to_the_disk_and_restored_by_the_next_start()
    {
        var sidecar = ReservationSidecar.For(DiskPath);
        Assert.Equal(DiskPath + ".pr", sidecar.Path);
        using (var lu = new SharedLogicalUnit("d", sidecar))
        using (var h = Harness(lu, "e1"))
        {
            h.Run(PrOut(ReserveOutAction.Register), dataOut: Parameters(0, 0x1234, flags: 0x01)).AssertGood();
            h.Run(PrOut(ReserveOutAction.Reserve, ReservationType.WriteExclusive), dataOut: Parameters(0x1234, 0)).AssertGood();
            // PTPL_C 1; PTPL_A 1.
            var caps = h.Run(PrIn(ReserveInAction.ReportCapabilities), dataIn: 8);
            Assert.Equal(new byte[] { 0x00, 0x08, 0x01, 0x91, 0xEA, 0x01, 0x00, 0x00 }, caps.Data);
            string text = File.ReadAllText(sidecar.Path);
            Assert.Contains("\"format\": \"blktarget-pr-1\"", text);
            Assert.Contains("\"key\": \"0x0000000000001234\"", text);
            Assert.Contains("\"holder\": true", text);
            Assert.Contains("\"type\": 1", text);
        }
        using (var lu = new SharedLogicalUnit("d", sidecar))
        using (var h = Harness(lu, "e1"))
        {
            var keys = h.Run(PrIn(ReserveInAction.ReadKeys), dataIn: 64);
            Assert.Equal(new byte[] { 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x12, 0x34 }, keys.Data[..16]);
            var reservation = h.Run(PrIn(ReserveInAction.ReadReservation), dataIn: 24);
            Assert.Equal(new byte[] { 0, 0, 0, 1, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0, 0, 0, 0, 0, 0x01, 0, 0 }, reservation.Data);
            // The restored registration is no connection's: this nexus must register anew and preempt it.
            Assert.Equal(ScsiStatus.ReservationConflict, h.Run(Cdbs.Rw10(ScsiOp.Write10, 0, 1), dataOut: new byte[512]).Status);
            h.Run(PrOut(ReserveOutAction.RegisterAndIgnoreExistingKey), dataOut: Parameters(0, 0x55, flags: 0x01)).AssertGood();
            h.Run(PrOut(ReserveOutAction.Preempt, ReservationType.WriteExclusive), dataOut: Parameters(0x55, 0x1234)).AssertGood();
            h.Run(Cdbs.Rw10(ScsiOp.Write10, 0, 1), dataOut: new byte[512]).AssertGood();
            // APTPL 0 on the next REGISTER: the file says so, and the next start has nothing.
            h.Run(PrOut(ReserveOutAction.Register), dataOut: Parameters(0x55, 0x56)).AssertGood();
        }
        Assert.Contains("\"aptpl\": false", File.ReadAllText(sidecar.Path));
        Assert.Same(ReservationSnapshot.Empty, sidecar.Load());
    }

    [Fact]
    public void A_damaged_sidecar_is_refused_with_its_path()
    {
        File.WriteAllText(DiskPath + ".pr", "{\"format\":\"blktarget-pr-1\",\"aptpl\":true,\"generation\":1,\"type\":2,\"registrations\":[]}");
        var e = Assert.Throws<InvalidDataException>(() => ReservationSidecar.For(DiskPath).Load());
        Assert.StartsWith(DiskPath + ".pr: ", e.Message);
        File.WriteAllBytes(DiskPath + ".pr", Encoding.UTF8.GetBytes("not json"));
        Assert.Throws<InvalidDataException>(() => new SharedLogicalUnit("d", ReservationSidecar.For(DiskPath)));
    }
}
