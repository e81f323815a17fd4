using System.Buffers.Binary;
using System.Text.Json.Nodes;
using BlkTarget.Configuration;
using BlkTarget.Hosting;
using BlkTarget.Management;
using BlkTarget.Vhost.Frontend;
using BlkTarget.Vhost.Scsi;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlkTarget.IntegrationTests.Scsi;

/// <summary>
/// COMPARE AND WRITE (SBC-3 5.2) over real sockets: two frontends on two SCSI exports of one shared image disk
/// (io_uring, so reads and writes complete later, on each export's reactor), made over RPC. A match writes, a stale
/// compare is a MISCOMPARE with the offset, and two initiators racing to increment a counter block with it lose
/// nothing.
/// </summary>
public sealed class ScsiCompareAndWriteIntegrationTests : IDisposable
{
    private readonly string _dir = Directory.CreateDirectory(Path.Combine("/var/tmp", $"blkt-caw-{Guid.NewGuid():N}")).FullName;

    private string Rpc => Path.Combine(_dir, "rpc.sock");

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private sealed class Initiator(TestGuest guest) : IDisposable
    {
        private readonly ScsiCommandQueue _q = new(guest.Queues[2], guest.Arena);
        private readonly GuestBuffer _out = guest.Allocate(1024);
        private readonly GuestBuffer _in = guest.Allocate(512);

        public ScsiCompletion CompareAndWrite(ulong lba, byte[] verify, byte[] write)
        {
            verify.CopyTo(_out.Span);
            write.CopyTo(_out.Span[512..]);
            var cdb = new byte[16];
            cdb[0] = ScsiOp.CompareAndWrite;
            BinaryPrimitives.WriteUInt64BigEndian(cdb.AsSpan(2), lba);
            cdb[13] = 1;
            return _q.Execute(0, 0, cdb, dataOut: [_out]);
        }

        public byte[] Read(ulong lba)
        {
            var cdb = new byte[10];
            cdb[0] = ScsiOp.Read10;
            BinaryPrimitives.WriteUInt32BigEndian(cdb.AsSpan(2), (uint)lba);
            cdb[8] = 1;
            var c = _q.Execute(0, 0, cdb, dataIn: [_in]);
            Assert.True(c.IsGood, $"READ: status {c.Status}, sense {c.SenseCode}");
            return _in.Span.ToArray();
        }

        public void Dispose() => guest.Dispose();
    }

    private Initiator Connect(string export) =>
        new(TestGuest.Connect(Path.Combine(_dir, export + ".sock"), queues: 3,
            options: new VhostUserFrontendOptions { ConfigSize = ScsiConfigSpace.Size }));

    private static byte[] Block(ulong value)
    {
        var b = new byte[512];
        for (int i = 0; i < 512; i += 8) BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(i), value);
        return b;
    }

    [Fact]
    public void Two_initiators_on_two_exports_of_a_shared_disk_compare_and_write_one_counter_without_losing_an_increment()
    {
        using var runtime = TargetRuntime.Start(new TargetSettings { Devices = [] }, NullLoggerFactory.Instance,
            new ManagementSettings { RpcSocket = Rpc });
        RpcClient.Call(Rpc, "disk_create", new JsonObject { ["name"] = "shared", ["backend"] = $"image:{Path.Combine(_dir, "shared.bti")}", ["create"] = "16M", ["shared"] = true });
        foreach (var name in new[] { "node-a", "node-b" })
            RpcClient.Call(Rpc, "export_create_scsi", new JsonObject
            {
                ["name"] = name, ["socket"] = Path.Combine(_dir, name + ".sock"), ["luns"] = new JsonArray(new JsonObject { ["disk"] = "shared" }),
            });
        using var a = Connect("node-a");
        using var b = Connect("node-b");

        // A match on a never-written block (zeros) writes; B's compare with the old zeros then miscompares at byte 0:
        // fixed sense F0h (VALID), MISCOMPARE, INFORMATION 0, MISCOMPARE DURING VERIFY OPERATION.
        Assert.True(a.CompareAndWrite(100, Block(0), Block(1)).IsGood);
        var stale = b.CompareAndWrite(100, Block(0), Block(2));
        Assert.Equal(ScsiStatus.CheckCondition, stale.Status);
        Assert.Equal(new byte[] { 0xF0, 0, 0x0E, 0, 0, 0, 0, 0x0A, 0, 0, 0, 0, 0x1D, 0x00, 0, 0, 0, 0 }, stale.Sense[..18]);
        Assert.Equal(Block(1), b.Read(100));

        const int perInitiator = 150;
        void Increments(Initiator i)
        {
            for (int n = 0; n < perInitiator;)
            {
                ulong v = BinaryPrimitives.ReadUInt64LittleEndian(i.Read(200));
                var c = i.CompareAndWrite(200, Block(v), Block(v + 1));
                if (c.IsGood) n++;
                else Assert.Equal(new SenseCode(0x0E, 0x1D, 0x00), c.SenseCode);
            }
        }
        Exception? failure = null;
        var other = new Thread(() =>
        {
            try { Increments(b); }
            catch (Exception e) { failure = e; }
        });
        other.Start();
        Increments(a);
        other.Join();
        Assert.Null(failure);
        Assert.Equal(Block(2 * perInitiator), a.Read(200));
    }
}
