using System.Buffers.Binary;
using System.Text.Json.Nodes;
using BlkTarget.Configuration;
using BlkTarget.Hosting;
using BlkTarget.Management;
using BlkTarget.Tests.Ceph;
using BlkTarget.Vhost.Frontend;
using BlkTarget.Vhost.Protocol;
using Microsoft.Extensions.Logging.Abstractions;
using static BlkTarget.IntegrationTests.TestData;

namespace BlkTarget.IntegrationTests;

/// <summary>An rbd disk served over a real socket: our frontend reads and writes it on two queues (two reactors on one
/// image), and an <c>rbd resize</c> made outside reaches the frontend as a config change with the new capacity.</summary>
public sealed class RbdExportTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("blkt-rbd-").FullName;

    private string Rpc => Path.Combine(_dir, "rpc.sock");

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private JsonNode? Call(string method, JsonObject parameters) => RpcClient.Call(Rpc, method, parameters);

    [Fact]
    public void A_frontend_does_io_on_an_rbd_disk_and_sees_a_resize_made_outside()
    {
        string image = CephTestCluster.CreateImage(16, "exp");
        using var runtime = TargetRuntime.Start(new TargetSettings { Devices = [], Cpus = [0, 1] }, NullLoggerFactory.Instance,
            new ManagementSettings { RpcSocket = Rpc });
        Call("disk_create", new JsonObject { ["name"] = "d1", ["backend"] = $"rbd:rbd/{image},conf={CephTestCluster.ConfPath}" });
        string socket = Path.Combine(_dir, "vm1.sock");
        Call("export_create_blk", new JsonObject { ["name"] = "vm1", ["socket"] = socket, ["disk"] = "d1", ["queues"] = 2 });
        using var guest = TestGuest.Connect(socket, queues: 2);
        Assert.Equal(32768UL, guest.Frontend.Config!.Capacity);

        for (int q = 0; q < 2; q++)
        {
            var data = guest.Allocate(65536);
            Fill(data.Span, seed: q);
            Assert.Equal(Ok, guest.Blk[q].Execute(BlkRequestType.Out, (ulong)q * 1024, [data]).Status);
            Assert.Equal(Ok, guest.Blk[q].Execute(BlkRequestType.Flush, 0, []).Status);
        }
        for (int q = 0; q < 2; q++)
        {
            var back = guest.Allocate(65536);
            Assert.Equal(Ok, guest.Blk[1 - q].Execute(BlkRequestType.In, (ulong)q * 1024, [back]).Status);
            Assert.Equal(Random(65536, q), back.Span.ToArray());
        }
        Assert.NotEqual(Ok, guest.Blk[0].Execute(BlkRequestType.In, 32768, [guest.Allocate(512)]).Status);   // past the end

        CephTestCluster.Rbd($"resize --size 24M rbd/{image}");
        using (var message = guest.Frontend.ReceiveBackendRequest(TimeSpan.FromSeconds(20)))
        {
            Assert.NotNull(message);
            Assert.Equal(2u, (uint)message.Header.Request);          // VHOST_USER_BACKEND_CONFIG_CHANGE_MSG
        }
        Assert.Equal(49152UL, BinaryPrimitives.ReadUInt64LittleEndian(guest.Frontend.GetConfig(0, 8)));
        var tail = guest.Allocate(4096);
        Fill(tail.Span, seed: 9);
        Assert.Equal(Ok, guest.Blk[0].Execute(BlkRequestType.Out, 49152 - 8, [tail]).Status);
        var tailBack = guest.Allocate(4096);
        Assert.Equal(Ok, guest.Blk[1].Execute(BlkRequestType.In, 49152 - 8, [tailBack]).Status);
        Assert.Equal(Random(4096, 9), tailBack.Span.ToArray());
        Assert.Equal(24UL << 20, (ulong)Call("disk_list", new JsonObject { ["name"] = "d1" })!.AsArray()[0]!["size_bytes"]!);
    }
}
