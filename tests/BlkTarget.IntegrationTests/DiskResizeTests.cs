using System.Buffers.Binary;
using System.Text.Json.Nodes;
using BlkTarget.Configuration;
using BlkTarget.Hosting;
using BlkTarget.Management;
using BlkTarget.Vhost.Frontend;
using BlkTarget.Vhost.Protocol;
using BlkTarget.Vhost.Scsi;
using Microsoft.Extensions.Logging.Abstractions;
using static BlkTarget.IntegrationTests.TestData;

namespace BlkTarget.IntegrationTests;

/// <summary>disk_resize over the real RPC socket while a frontend is connected: the blk frontend hears
/// VHOST_USER_BACKEND_CONFIG_CHANGE_MSG on its backend request channel and reads the new capacity; the scsi
/// frontend gets a PARAM_CHANGE event and CAPACITY DATA HAS CHANGED; I/O past the old end works.</summary>
public sealed class DiskResizeTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("blkt-resize-").FullName;

    private string Rpc => Path.Combine(_dir, "rpc.sock");

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private TargetRuntime Start(string? persist = null) =>
        TargetRuntime.Start(new TargetSettings { Devices = [] }, NullLoggerFactory.Instance,
            new ManagementSettings { RpcSocket = Rpc, PersistPath = persist });

    private JsonNode? Call(string method, JsonObject parameters) => RpcClient.Call(Rpc, method, parameters);

    [Theory]
    [InlineData("ram")]
    [InlineData("file")]
    [InlineData("image")]
    public void A_blk_frontend_is_sent_a_config_change_and_sees_the_new_capacity(string kind)
    {
        string config = Path.Combine(_dir, "target.json");
        File.WriteAllText(config, "{}");
        using var runtime = Start(persist: config);
        string backend = kind switch
        {
            "ram" => "ram:16M",
            "file" => $"file:{Path.Combine(_dir, "d1.raw")}",
            _ => $"image:{Path.Combine(_dir, "d1.bti")}",
        };
        var create = new JsonObject { ["name"] = "d1", ["backend"] = backend };
        if (kind == "file") create["create"] = "16M";
        // 4 KiB clusters: the map grows from 8 to 12 clusters, so the data clusters in its way must move.
        if (kind == "image") BlkTarget.Storage.Image.ImageFile.Create(Path.Combine(_dir, "d1.bti"), 16 << 20, 4096);
        Call("disk_create", create);
        string socket = Path.Combine(_dir, "vm1.sock");
        Call("export_create_blk", new JsonObject { ["name"] = "vm1", ["socket"] = socket, ["disk"] = "d1" });
        using var guest = TestGuest.Connect(socket);
        Assert.Equal((ProtocolFeatures)0, guest.Frontend.AckedProtocolFeatures & ~VhostUserFrontendOptions.SupportedProtocolFeatures);
        Assert.True((guest.Frontend.AckedProtocolFeatures & ProtocolFeatures.BackendReq) != 0);
        Assert.Equal(32768UL, guest.Frontend.Config!.Capacity);

        var data = guest.Allocate(4096);
        Fill(data.Span, seed: 5);
        Assert.NotEqual(Ok, guest.Blk[0].Execute(BlkRequestType.Out, 32768, [data]).Status);   // past the end: IOERR
        var early = guest.Allocate(65536);
        Fill(early.Span, seed: 6);
        Assert.Equal(Ok, guest.Blk[0].Execute(BlkRequestType.Out, 0, [early]).Status);

        var result = Call("disk_resize", new JsonObject { ["name"] = "d1", ["size"] = "24M" })!;
        Assert.Equal(24UL << 20, (ulong)result["size_bytes"]!);
        Assert.Equal("vm1", (string)result["notified"]![0]!);

        using (var message = guest.Frontend.ReceiveBackendRequest(TimeSpan.FromSeconds(10)))
        {
            Assert.NotNull(message);
            Assert.Equal(2u, (uint)message.Header.Request);          // VHOST_USER_BACKEND_CONFIG_CHANGE_MSG
            Assert.Equal(1u, message.Header.Flags);                  // version 1, no NEED_REPLY
            Assert.Equal(0u, message.Header.Size);
        }
        var config8 = guest.Frontend.GetConfig(0, 8);
        Assert.Equal(49152UL, BinaryPrimitives.ReadUInt64LittleEndian(config8));     // 24 MiB in 512-byte sectors

        Assert.Equal(Ok, guest.Blk[0].Execute(BlkRequestType.Out, 32768, [data]).Status);
        var back = guest.Allocate(4096);
        Assert.Equal(Ok, guest.Blk[0].Execute(BlkRequestType.In, 32768, [back]).Status);
        Assert.Equal(Random(4096, 5), back.Span.ToArray());
        Assert.NotEqual(Ok, guest.Blk[0].Execute(BlkRequestType.In, 49152, [back]).Status);
        var earlyBack = guest.Allocate(65536);
        Assert.Equal(Ok, guest.Blk[0].Execute(BlkRequestType.In, 0, [earlyBack]).Status);
        Assert.Equal(Random(65536, 6), earlyBack.Span.ToArray());

        Assert.Equal(24UL << 20, (ulong)Call("disk_list", new JsonObject { ["name"] = "d1" })!.AsArray()[0]!["size_bytes"]!);
        if (kind == "file") Assert.Equal(24L << 20, new FileInfo(Path.Combine(_dir, "d1.raw")).Length);
        else if (kind == "ram") Assert.Contains("\"ram:24M\"", File.ReadAllText(config));
        // (an image's header holds its size: the storage tests read it; the target keeps the file locked here)
    }

    [Fact]
    public void Shrinking_and_bad_sizes_are_refused_and_change_nothing()
    {
        using var runtime = Start();
        Call("disk_create", new JsonObject { ["name"] = "d1", ["backend"] = "ram:16M" });
        var smaller = Assert.Throws<ManagementException>(() => Call("disk_resize", new JsonObject { ["name"] = "d1", ["size"] = "8M" }));
        Assert.Equal(RpcErrorCode.InvalidParams, smaller.Code);
        var odd = Assert.Throws<ManagementException>(() => Call("disk_resize", new JsonObject { ["name"] = "d1", ["size"] = (16 << 20) + 100 }));
        Assert.Equal(RpcErrorCode.InvalidParams, odd.Code);
        var missing = Assert.Throws<ManagementException>(() => Call("disk_resize", new JsonObject { ["name"] = "nope", ["size"] = "32M" }));
        Assert.Equal(RpcErrorCode.NotFound, missing.Code);
        Assert.Equal(16UL << 20, (ulong)Call("disk_list", new JsonObject { ["name"] = "d1" })!.AsArray()[0]!["size_bytes"]!);
    }

    [Fact]
    public void A_scsi_lun_that_grew_reports_capacity_data_has_changed_and_a_param_change_event()
    {
        using var runtime = Start();
        Call("disk_create", new JsonObject { ["name"] = "l0", ["backend"] = "ram:8M" });
        string socket = Path.Combine(_dir, "s1.sock");
        Call("export_create_scsi", new JsonObject
        {
            ["name"] = "s1", ["socket"] = socket, ["luns"] = new JsonArray(new JsonObject { ["disk"] = "l0" }),
        });
        using var guest = TestGuest.Connect(socket, queues: 3, options: new VhostUserFrontendOptions { ConfigSize = ScsiConfigSpace.Size });
        var events = guest.Queues[1];
        var eventBuffer = guest.Allocate(16);
        Assert.True(events.TryAdd([new VirtqBuffer(eventBuffer.Gpa, 16, Writable: true)], token: 7));
        events.PublishAvail();
        events.Kick();
        var queue = new ScsiCommandQueue(guest.Queues[2], guest.Arena);
        Assert.True(queue.Execute(0, 0, [0x00, 0, 0, 0, 0, 0]).IsGood);     // TEST UNIT READY

        Call("disk_resize", new JsonObject { ["name"] = "l0", ["size"] = "12M" });

        Assert.True(events.WaitForUsed(TimeSpan.FromSeconds(10)));
        Assert.True(events.TryGetUsed(out ulong token, out uint length));
        Assert.Equal((7UL, 16u), (token, length));
        // PARAM_CHANGE (3) for target 0 LUN 0, reason ASC 2Ah | ASCQ 09h << 8
        Assert.Equal(new byte[] { 3, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x2a, 0x09, 0, 0 }, eventBuffer.Span.ToArray());

        var attention = queue.Execute(0, 0, [0x00, 0, 0, 0, 0, 0]);
        Assert.Equal(ScsiStatus.CheckCondition, attention.Status);
        Assert.Equal(new SenseCode(0x6, 0x2a, 0x09), attention.SenseCode);
        Assert.True(queue.Execute(0, 0, [0x00, 0, 0, 0, 0, 0]).IsGood);     // reported once

        var capacity = guest.Allocate(32);
        byte[] readCapacity16 = [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0];
        Assert.True(queue.Execute(0, 0, readCapacity16, dataIn: [capacity]).IsGood);
        Assert.Equal(24575UL, BinaryPrimitives.ReadUInt64BigEndian(capacity.Span));   // last LBA of 12 MiB in 512-byte blocks
    }
}
