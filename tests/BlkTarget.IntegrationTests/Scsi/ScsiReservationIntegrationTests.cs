using System.Buffers.Binary;
using System.Text.Json.Nodes;
using BlkTarget.Configuration;
using BlkTarget.Hosting;
using BlkTarget.Management;
using BlkTarget.Vhost.Frontend;
using BlkTarget.Vhost.Scsi;
using BlkTarget.Vhost.Scsi.Reservations;
using Microsoft.Extensions.Logging.Abstractions;
using static BlkTarget.IntegrationTests.TestData;

namespace BlkTarget.IntegrationTests.Scsi;

/// <summary>
/// Persistent reservations between two initiators: two frontends on two SCSI exports of one shared image disk (two
/// I_T nexuses of one logical unit), made over the real RPC socket: registration, a reservation and its conflicts,
/// PREEMPT, PREEMPT AND ABORT with their unit attentions, and APTPL state back after a target restart.
/// </summary>
public sealed class ScsiReservationIntegrationTests : IDisposable
{
    private readonly string _dir = Directory.CreateDirectory(Path.Combine("/var/tmp", $"blkt-pr-{Guid.NewGuid():N}")).FullName;

    private string Rpc => Path.Combine(_dir, "rpc.sock");
    private string Config => Path.Combine(_dir, "target.json");
    private string DiskPath => Path.Combine(_dir, "shared.bti");

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private TargetRuntime Start(TargetSettings? settings = null) =>
        TargetRuntime.Start(settings ?? new TargetSettings { Devices = [] }, NullLoggerFactory.Instance,
            new ManagementSettings { RpcSocket = Rpc, PersistPath = Config });

    private sealed class Initiator(TestGuest guest) : IDisposable
    {
        private readonly ScsiCommandQueue _q = new(guest.Queues[2], guest.Arena);

        public ScsiCompletion Run(byte[] cdb, byte[]? dataOut = null, int dataIn = 0, List<byte[]>? received = null)
        {
            GuestBuffer[] outs = [];
            if (dataOut is not null)
            {
                var b = guest.Allocate((uint)dataOut.Length);
                dataOut.CopyTo(b.Span);
                outs = [b];
            }
            var into = dataIn > 0 ? guest.Allocate((uint)dataIn) : default;
            var c = _q.Execute(0, 0, cdb, dataOut: outs, dataIn: dataIn > 0 ? [into] : []);
            received?.Add(dataIn > 0 ? into.Span[..(dataIn - (int)c.Resid)].ToArray() : []);
            return c;
        }

        public ScsiCompletion Out(int action, ulong key, ulong sark, byte type = 0, bool aptpl = false)
        {
            var p = new byte[24];
            BinaryPrimitives.WriteUInt64BigEndian(p, key);
            BinaryPrimitives.WriteUInt64BigEndian(p.AsSpan(8), sark);
            p[20] = (byte)(aptpl ? 1 : 0);
            return Run([ScsiOp.PersistentReserveOut, (byte)action, type, 0, 0, 0, 0, 0, 24, 0], p);
        }

        public byte[] In(int action)
        {
            var got = new List<byte[]>();
            var c = Run([ScsiOp.PersistentReserveIn, (byte)action, 0, 0, 0, 0, 0, 0x02, 0x00, 0], dataIn: 512, received: got);
            Assert.True(c.IsGood, $"PERSISTENT RESERVE IN: status {c.Status}, sense {c.SenseCode}");
            return got[0];
        }

        public ScsiCompletion Write() => Run(Rw10(0x2a, 64, 1), new byte[512]);
        public ScsiCompletion Read() => Run(Rw10(0x28, 64, 1), dataIn: 512);

        public void Dispose() => guest.Dispose();
    }

    private Initiator Connect(string export) =>
        new(TestGuest.Connect(Path.Combine(_dir, export + ".sock"), queues: 3,
            options: new VhostUserFrontendOptions { ConfigSize = ScsiConfigSpace.Size }));

    private static void Good(ScsiCompletion c) => Assert.True(c.IsGood, $"status {c.Status}, sense {c.SenseCode}");
    private static void Conflict(ScsiCompletion c) => Assert.Equal(ScsiStatus.ReservationConflict, c.Status);

    [Fact]
    public void Two_initiators_on_two_exports_of_a_shared_disk_see_one_reservation_state_which_survives_a_restart()
    {
        using (var runtime = Start())
        {
            RpcClient.Call(Rpc, "disk_create", new JsonObject { ["name"] = "shared", ["backend"] = $"image:{DiskPath}", ["create"] = "16M", ["shared"] = true });
            foreach (var name in new[] { "node-a", "node-b" })
                RpcClient.Call(Rpc, "export_create_scsi", new JsonObject
                {
                    ["name"] = name, ["socket"] = Path.Combine(_dir, name + ".sock"), ["luns"] = new JsonArray(new JsonObject { ["disk"] = "shared" }),
                });
            using var a = Connect("node-a");
            using var b = Connect("node-b");

            Good(a.Out(ReserveOutAction.Register, 0, 0xA1, aptpl: true));
            Good(b.Out(ReserveOutAction.RegisterAndIgnoreExistingKey, 0, 0xB1, aptpl: true));
            Assert.Equal(new byte[] { 0, 0, 0, 2, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0xA1, 0, 0, 0, 0, 0, 0, 0, 0xB1 }, b.In(ReserveInAction.ReadKeys));
            Good(a.Out(ReserveOutAction.Reserve, 0xA1, 0, ReservationType.WriteExclusive));
            Good(a.Write());
            Conflict(b.Write());
            Good(b.Read());
            Conflict(b.Out(ReserveOutAction.Reserve, 0xB1, 0, ReservationType.WriteExclusive));

            // B preempts A: A's registration is gone (unit attention REGISTRATIONS PREEMPTED), B holds an EA reservation.
            Good(b.Out(ReserveOutAction.Preempt, 0xB1, 0xA1, ReservationType.ExclusiveAccess));
            var ua = a.Read();
            Assert.Equal(ScsiStatus.CheckCondition, ua.Status);
            Assert.Equal(new SenseCode(0x06, 0x2a, 0x05), ua.SenseCode);
            Conflict(a.Read());
            Good(b.Write());

            // A comes back with a new key and PREEMPT AND ABORTs B.
            Good(a.Out(ReserveOutAction.RegisterAndIgnoreExistingKey, 0, 0xA2, aptpl: true));
            Good(a.Out(ReserveOutAction.PreemptAndAbort, 0xA2, 0xB1, ReservationType.ExclusiveAccess));
            Assert.Equal(new SenseCode(0x06, 0x2a, 0x05), b.Write().SenseCode);
            Conflict(b.Read());
            Good(a.Write());
            Assert.Equal(new byte[] { 0, 0, 0, 5, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0xA2, 0, 0, 0, 0, 0, 0x03, 0, 0 },
                a.In(ReserveInAction.ReadReservation));
        }
        Assert.True(File.Exists(DiskPath + ".pr"));

        using (var runtime = Start(ConfigFile.Load(Config)))
        {
            using var a = Connect("node-a");
            using var b = Connect("node-b");
            Assert.Equal(new byte[] { 0, 0, 0, 5, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0xA2 }, b.In(ReserveInAction.ReadKeys));
            Assert.Equal(new byte[] { 0, 0, 0, 5, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0xA2, 0, 0, 0, 0, 0, 0x03, 0, 0 },
                b.In(ReserveInAction.ReadReservation));
            // Reconnected frontends are new nexuses: neither holds it until it registers and preempts the old key.
            Conflict(a.Read());
            Good(a.Out(ReserveOutAction.RegisterAndIgnoreExistingKey, 0, 0xA3, aptpl: true));
            Good(a.Out(ReserveOutAction.Preempt, 0xA3, 0xA2, ReservationType.ExclusiveAccess));
            Good(a.Read());
            Conflict(b.Read());
            Good(a.Out(ReserveOutAction.Release, 0xA3, 0, ReservationType.ExclusiveAccess));
            Good(b.Read());
            Good(a.Out(ReserveOutAction.Register, 0xA3, 0));
            Assert.Equal(new byte[] { 0, 0, 0, 8, 0, 0, 0, 0 }, b.In(ReserveInAction.ReadKeys));
        }
    }
}
