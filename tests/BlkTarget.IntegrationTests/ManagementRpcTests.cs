using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;
using BlkTarget.Configuration;
using BlkTarget.Hosting;
using BlkTarget.Management;
using BlkTarget.Vhost.Frontend;
using Microsoft.Extensions.Logging.Abstractions;
using static BlkTarget.IntegrationTests.TestData;

namespace BlkTarget.IntegrationTests;

/// <summary>The management interface over its real socket: disks and exports created, used by a frontend,
/// deleted under it, and found again after a restart from the persisted config file.</summary>
public sealed class ManagementRpcTests : IDisposable
{
    private readonly RpcTargetHarness _harness = new("blkt-mgmt-");
    private string _dir => _harness.Directory;

    private string Rpc => _harness.Rpc;
    private string Config => Path.Combine(_dir, "target.json");

    private TargetRuntime Start(TargetSettings? settings = null, string? persist = null) =>
        _harness.Start(settings, m => m with { PersistPath = persist });

    private JsonNode? Call(string method, JsonObject? parameters = null) => _harness.Call(method, parameters);

    private static void WriteAndReadBack(TestGuest guest, ulong sector, int seed)
    {
        var data = guest.Allocate(64 << 10);
        Fill(data.Span, seed);
        Assert.Equal(Ok, guest.Blk[0].Execute(BlkRequestType.Out, sector, [data]).Status);
        var back = guest.Allocate(64 << 10);
        Assert.Equal(Ok, guest.Blk[0].Execute(BlkRequestType.In, sector, [back]).Status);
        Assert.Equal(Random(64 << 10, seed), back.Span.ToArray());
    }

    [Fact]
    public void A_disk_and_export_created_over_rpc_serve_frontend_io()
    {
        using var runtime = Start();
        var disk = Call("disk_create", new JsonObject { ["name"] = "d1", ["backend"] = "ram:16M" })!;
        Assert.Equal(16UL << 20, (ulong)disk["size_bytes"]!);
        string socket = Path.Combine(_dir, "vm1.sock");
        var export = Call("export_create_blk", new JsonObject { ["name"] = "vm1", ["socket"] = socket, ["disk"] = "d1", ["queues"] = 2 })!;
        Assert.Equal(2, (int)export["queues"]!);
        Assert.True(File.Exists(socket));

        using var guest = TestGuest.Connect(socket, queues: 2);
        WriteAndReadBack(guest, 128, seed: 1);
        var listed = Call("export_list")!.AsArray().Single()!;
        Assert.True((bool)listed["connected"]!);
        var frontend = listed["frontend"]!;
        Assert.Equal(["SIZE_MAX", "SEG_MAX", "BLK_SIZE", "FLUSH", "TOPOLOGY", "CONFIG_WCE", "MQ", "DISCARD", "WRITE_ZEROES",
            "RING_INDIRECT_DESC", "RING_EVENT_IDX", "PROTOCOL_FEATURES", "VERSION_1"], frontend["feature_names"]!.AsArray().Select(n => (string)n!));
        Assert.Equal("0x170007e46", (string)frontend["features"]!);   // bits 1 2 6 9 10 11 12 13 14 28 29 30 32
        Assert.Equal(["MQ", "LOG_SHMFD", "REPLY_ACK", "BACKEND_REQ", "CONFIG", "INFLIGHT_SHMFD", "CONFIGURE_MEM_SLOTS"], frontend["protocol_features"]!.AsArray().Select(n => (string)n!));
        Assert.True((bool)frontend["backend_channel"]!);
        var queues = frontend["queues"]!.AsArray();
        Assert.Equal(2, queues.Count);
        Assert.All(queues, q => Assert.True((bool)q!["running"]! && (int)q["reactor"]! >= 0 && (uint)q["size"]! == 128));
        Assert.Equal(0, (int)frontend["in_flight"]!);
        Assert.Equal("vm1", (string)Call("disk_list")!.AsArray().Single()!["exports"]![0]!);
    }

    [Fact]
    public void A_scsi_export_created_over_rpc_serves_its_luns()
    {
        using var runtime = Start();
        Call("disk_create", new JsonObject { ["name"] = "l0", ["backend"] = "ram:8M" });
        Call("disk_create", new JsonObject { ["name"] = "l1", ["backend"] = "ram:8M" });
        string socket = Path.Combine(_dir, "s1.sock");
        Call("export_create_scsi", new JsonObject
        {
            ["name"] = "s1", ["socket"] = socket, ["queues"] = 1,
            ["luns"] = new JsonArray(new JsonObject { ["disk"] = "l0" }, new JsonObject { ["lun"] = 1, ["disk"] = "l1" }),
        });
        using var guest = TestGuest.Connect(socket, queues: 3, options: new VhostUserFrontendOptions { ConfigSize = BlkTarget.Vhost.Scsi.ScsiConfigSpace.Size });
        var queue = new ScsiCommandQueue(guest.Queues[2], guest.Arena);
        for (ushort lun = 0; lun < 2; lun++)
        {
            var data = guest.Allocate(4096);
            Fill(data.Span, seed: 10 + lun);
            Assert.True(queue.Execute(0, lun, Rw10(0x2a, 8, 8), dataOut: [data]).IsGood);
        }
        for (ushort lun = 0; lun < 2; lun++)
        {
            var back = guest.Allocate(4096);
            Assert.True(queue.Execute(0, lun, Rw10(0x28, 8, 8), dataIn: [back]).IsGood);
            Assert.Equal(Random(4096, seed: 10 + lun), back.Span.ToArray());
        }
    }


    [Fact]
    public void Deleting_an_export_drains_and_disconnects_its_frontend_and_frees_the_disk()
    {
        using var runtime = Start();
        Call("disk_create", new JsonObject { ["name"] = "d1", ["backend"] = "ram:16M" });
        string socket = Path.Combine(_dir, "vm1.sock");
        Call("export_create_blk", new JsonObject { ["name"] = "vm1", ["socket"] = socket, ["disk"] = "d1" });
        using var guest = TestGuest.Connect(socket);
        WriteAndReadBack(guest, 0, seed: 2);

        var refused = Assert.Throws<ManagementException>(() => Call("disk_delete", new JsonObject { ["name"] = "d1" }));
        Assert.Equal(RpcErrorCode.InUse, refused.Code);

        Assert.True((bool)Call("export_delete", new JsonObject { ["name"] = "vm1" })!);
        Assert.True(guest.Frontend.WaitForClose(TimeSpan.FromSeconds(10)));
        Assert.False(File.Exists(socket));
        Assert.Empty(Call("export_list")!.AsArray());
        Assert.True((bool)Call("disk_delete", new JsonObject { ["name"] = "d1" })!);
        Assert.Empty(Call("disk_list")!.AsArray());
    }

    [Fact]
    public void A_restart_from_the_persisted_config_brings_back_every_disk_and_export_and_the_data()
    {
        File.WriteAllText(Config, "{}");
        string image = Path.Combine(_dir, "d1.bti");
        string socket = Path.Combine(_dir, "vm1.sock");
        using (var runtime = Start(ConfigFile.Load(Config), persist: Config))
        {
            Call("disk_create", new JsonObject { ["name"] = "d1", ["backend"] = $"image:{image}", ["create"] = "64M" });
            Call("disk_create", new JsonObject { ["name"] = "scratch", ["backend"] = "ram:8M", ["block_size"] = 4096, ["shared"] = true });
            Call("export_create_blk", new JsonObject { ["name"] = "vm1", ["socket"] = socket, ["disk"] = "d1", ["queues"] = 2, ["serial"] = "VM1" });
            Call("export_create_blk", new JsonObject { ["name"] = "s1", ["socket"] = Path.Combine(_dir, "s1.sock"), ["disk"] = "scratch" });
            Call("export_create_blk", new JsonObject { ["name"] = "s2", ["socket"] = Path.Combine(_dir, "s2.sock"), ["disk"] = "scratch" });
            using var guest = TestGuest.Connect(socket);
            WriteAndReadBack(guest, 2048, seed: 3);
            var flush = guest.Blk[0].Execute(BlkRequestType.Flush, 0, []);
            Assert.Equal(Ok, flush.Status);
        }
        Assert.False(File.Exists(socket));

        using (var runtime = Start(ConfigFile.Load(Config), persist: Config))
        {
            var disks = Call("disk_list")!.AsArray();
            Assert.Equal(["d1", "scratch"], disks.Select(d => (string)d!["name"]!));
            Assert.Equal(4096, (int)disks[1]!["block_size"]!);
            Assert.True((bool)disks[1]!["shared"]!);
            var exports = Call("export_list")!.AsArray();
            Assert.Equal(["vm1", "s1", "s2"], exports.Select(e => (string)e!["name"]!));
            Assert.Equal("VM1", (string)exports[0]!["serial"]!);
            Assert.Equal(2, (int)exports[0]!["queues"]!);
            using var guest = TestGuest.Connect(socket);
            var back = guest.Allocate(64 << 10);
            Assert.Equal(Ok, guest.Blk[0].Execute(BlkRequestType.In, 2048, [back]).Status);
            Assert.Equal(Random(64 << 10, 3), back.Span.ToArray());
        }
    }

    [Fact]
    public void A_failed_create_leaves_no_trace()
    {
        File.WriteAllText(Config, "{}");
        using var runtime = Start(persist: Config);
        Call("disk_create", new JsonObject { ["name"] = "d1", ["backend"] = "ram:16M" });
        string before = File.ReadAllText(Config);

        // An export on a path that is not a socket: refused, the file untouched, no export.
        string notASocket = Path.Combine(_dir, "file.sock");
        File.WriteAllText(notASocket, "keep");
        var e1 = Assert.Throws<ManagementException>(() =>
            Call("export_create_blk", new JsonObject { ["name"] = "vm1", ["socket"] = notASocket, ["disk"] = "d1" }));
        Assert.Equal(RpcErrorCode.ResourceError, e1.Code);
        Assert.Equal("keep", File.ReadAllText(notASocket));

        // An export of a missing disk: no socket file.
        string socket = Path.Combine(_dir, "vm2.sock");
        var e2 = Assert.Throws<ManagementException>(() =>
            Call("export_create_blk", new JsonObject { ["name"] = "vm2", ["socket"] = socket, ["disk"] = "nope" }));
        Assert.Equal(RpcErrorCode.NotFound, e2.Code);
        Assert.False(File.Exists(socket));

        // A change that cannot be persisted is undone: the image it created is removed again, no disk is left.
        File.Delete(Config);
        Directory.CreateDirectory(Config);   // the config path is now a directory: the rename fails
        string image = Path.Combine(_dir, "d2.bti");
        var e3 = Assert.Throws<ManagementException>(() =>
            Call("disk_create", new JsonObject { ["name"] = "d2", ["backend"] = $"image:{image}", ["create"] = "16M" }));
        Assert.Equal(RpcErrorCode.PersistFailed, e3.Code);
        Assert.False(File.Exists(image));
        var e4 = Assert.Throws<ManagementException>(() =>
            Call("export_create_blk", new JsonObject { ["name"] = "vm3", ["socket"] = socket, ["disk"] = "d1" }));
        Assert.Equal(RpcErrorCode.PersistFailed, e4.Code);
        Assert.False(File.Exists(socket));
        Assert.Equal(["d1"], Call("disk_list")!.AsArray().Select(d => (string)d!["name"]!));
        Assert.Empty(Call("export_list")!.AsArray());
        Assert.Empty(Call("disk_list")!.AsArray()[0]!["exports"]!.AsArray());
        Directory.Delete(Config);
        File.WriteAllText(Config, before);
    }

    [Fact]
    public void Concurrent_clients_are_serialised_and_each_name_is_created_once()
    {
        using var runtime = Start();
        var results = Enumerable.Range(0, 8).AsParallel().WithDegreeOfParallelism(8).Select(i =>
        {
            try
            {
                Call("disk_create", new JsonObject { ["name"] = $"d{i % 2}", ["backend"] = "ram:1M" });
                return 0;
            }
            catch (ManagementException e)
            {
                return (int)e.Code;
            }
        }).ToList();
        Assert.Equal(2, results.Count(r => r == 0));
        Assert.Equal(6, results.Count(r => r == (int)RpcErrorCode.AlreadyExists));
        Assert.Equal(2, Call("disk_list")!.AsArray().Count);
    }

    [Fact]
    public void The_rpc_socket_is_private_to_its_owner()
    {
        using var runtime = Start();
        if (!OperatingSystem.IsWindows()) Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Rpc));
    }

    [Fact]
    public void A_request_written_by_hand_as_one_line_gets_a_one_line_reply_and_stopping_closes_the_connection()
    {
        var runtime = Start();
        Call("disk_create", new JsonObject { ["name"] = "d1", ["backend"] = "ram:1M" });
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        socket.Connect(new UnixDomainSocketEndPoint(Rpc));
        socket.ReceiveTimeout = 30_000;
        using var stream = new NetworkStream(socket);
        // What `echo '...' | socat - UNIX-CONNECT:rpc.sock` sends, read back byte by byte: one line ending in a bare \n.
        string Ask(string request)
        {
            stream.Write(Encoding.UTF8.GetBytes(request + "\n"));
            var reply = new List<byte>();
            for (int b; (b = stream.ReadByte()) != '\n';) reply.Add(b >= 0 ? (byte)b : throw new EndOfStreamException("no reply line"));
            return Encoding.UTF8.GetString(reply.ToArray());
        }
        string line = Ask("""{"jsonrpc":"2.0","method":"disk_list","id":1}""");
        Assert.DoesNotContain('\r', line);
        var reply = JsonNode.Parse(line)!;
        Assert.Equal(("2.0", 1, "d1"), ((string)reply["jsonrpc"]!, (int)reply["id"]!, (string)reply["result"]![0]!["name"]!));
        var error = JsonNode.Parse(Ask("""{"jsonrpc":"2.0","method":"disk_delete","id":"two","params":{"name":"nope"}}"""))!;
        Assert.Equal(("two", (int)RpcErrorCode.NotFound, "no disk nope"), ((string)error["id"]!, (int)error["error"]!["code"]!, (string)error["error"]!["message"]!));

        // The connection stays open until the target stops; stopping closes it and removes the socket file.
        runtime.Dispose();
        Assert.Equal(-1, stream.ReadByte());
        Assert.False(File.Exists(Rpc));
    }

    public void Dispose()
    {
        _harness.Delete();
    }
}
