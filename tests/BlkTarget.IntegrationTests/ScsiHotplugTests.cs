using System.Text.Json.Nodes;
using BlkTarget.Configuration;
using BlkTarget.Hosting;
using BlkTarget.Management;
using BlkTarget.Vhost.Frontend;
using BlkTarget.Vhost.Scsi;
using Microsoft.Extensions.Logging.Abstractions;
using static BlkTarget.IntegrationTests.TestData;

namespace BlkTarget.IntegrationTests;

/// <summary>scsi_lun_add / scsi_lun_remove over the real RPC socket while a frontend runs: the events it finds on
/// its event queue (bytes written out), the unit attention on the other LUN, I/O to the new LUN on every request
/// queue, persistence, and refusals that change nothing.</summary>
public sealed class ScsiHotplugTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("blkt-hotplug-").FullName;
    private string Rpc => Path.Combine(_dir, "rpc.sock");

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private JsonNode? Call(string method, JsonObject parameters) => RpcClient.Call(Rpc, method, parameters);

    private static byte[] NextEvent(QueueDriver events, GuestBuffer buffer)
    {
        Assert.True(events.WaitForUsed(TimeSpan.FromSeconds(10)), "no event arrived");
        Assert.True(events.TryGetUsed(out _, out uint length));
        Assert.Equal(16u, length);
        return buffer.Span[..16].ToArray();
    }

    private static void PostEventBuffer(QueueDriver events, GuestBuffer buffer)
    {
        Assert.True(events.TryAdd([new VirtqBuffer(buffer.Gpa, 16, Writable: true)], token: 1));
        events.PublishAvail();
        events.Kick();
    }

    [Fact]
    public void A_lun_added_and_removed_while_the_frontend_runs_is_announced_on_the_event_queue()
    {
        string config = Path.Combine(_dir, "target.json");
        File.WriteAllText(config, "{}");
        using var runtime = TargetRuntime.Start(ConfigFile.Load(config), NullLoggerFactory.Instance,
            new ManagementSettings { RpcSocket = Rpc, PersistPath = config });
        Call("disk_create", new JsonObject { ["name"] = "l0", ["backend"] = "ram:8M" });
        Call("disk_create", new JsonObject { ["name"] = "l1", ["backend"] = $"file:{Path.Combine(_dir, "l1.raw")}", ["create"] = "8M" });
        string socket = Path.Combine(_dir, "s1.sock");
        Call("export_create_scsi", new JsonObject
        {
            ["name"] = "s1", ["socket"] = socket, ["queues"] = 2, ["luns"] = new JsonArray(new JsonObject { ["disk"] = "l0" }),
        });
        using var guest = TestGuest.Connect(socket, queues: 4, options: new VhostUserFrontendOptions { ConfigSize = ScsiConfigSpace.Size });
        var events = guest.Queues[1];
        var eventBuffer = guest.Allocate(16);
        PostEventBuffer(events, eventBuffer);
        var queue = new ScsiCommandQueue(guest.Queues[2], guest.Arena);
        byte[] testUnitReady = [0x00, 0, 0, 0, 0, 0];
        Assert.Equal(new SenseCode(0x5, 0x25, 0x00), queue.Execute(0, 3, testUnitReady).SenseCode);   // LOGICAL UNIT NOT SUPPORTED

        var added = Call("scsi_lun_add", new JsonObject { ["export"] = "s1", ["lun"] = 3, ["disk"] = "l1" })!;
        Assert.Equal(2, added["luns"]!.AsArray().Count);
        // TRANSPORT_RESET (1), target 0 LUN 3 (peripheral addressing), reason RESCAN (1)
        Assert.Equal(new byte[] { 1, 0, 0, 0, 1, 0, 0, 3, 0, 0, 0, 0, 1, 0, 0, 0 }, NextEvent(events, eventBuffer));
        // LUN 0 reports the changed LUN inventory once (SPC-4: REPORTED LUNS DATA HAS CHANGED).
        Assert.Equal(new SenseCode(0x6, 0x3f, 0x0e), queue.Execute(0, 0, testUnitReady).SenseCode);
        Assert.True(queue.Execute(0, 0, testUnitReady).IsGood);

        foreach (int q in new[] { 2, 3 })        // the new LUN works on both request queues (channels opened on first use)
        {
            var rq = new ScsiCommandQueue(guest.Queues[q], guest.Arena);
            var data = guest.Allocate(4096);
            Fill(data.Span, seed: q);
            Assert.True(rq.Execute(0, 3, Rw10(0x2a, (uint)(8 * q), 8), dataOut: [data]).IsGood);
            var back = guest.Allocate(4096);
            Assert.True(rq.Execute(0, 3, Rw10(0x28, (uint)(8 * q), 8), dataIn: [back]).IsGood);
            Assert.Equal(Random(4096, q), back.Span.ToArray());
        }
        Assert.Contains("\"disk\": \"l1\"", File.ReadAllText(config));
        Assert.Equal(RpcErrorCode.InUse, Assert.Throws<ManagementException>(() => Call("disk_delete", new JsonObject { ["name"] = "l1" })).Code);

        PostEventBuffer(events, eventBuffer);
        Call("scsi_lun_remove", new JsonObject { ["export"] = "s1", ["lun"] = 3 });
        // TRANSPORT_RESET (1), target 0 LUN 3, reason REMOVED (2)
        Assert.Equal(new byte[] { 1, 0, 0, 0, 1, 0, 0, 3, 0, 0, 0, 0, 2, 0, 0, 0 }, NextEvent(events, eventBuffer));
        Assert.Equal(new SenseCode(0x5, 0x25, 0x00), queue.Execute(0, 3, testUnitReady).SenseCode);
        Assert.DoesNotContain("\"l1\"", File.ReadAllText(config).Replace("\"name\": \"l1\"", ""));
        Assert.True((bool)Call("disk_delete", new JsonObject { ["name"] = "l1" })!);   // detached: the disk can go
        var last = Assert.Throws<ManagementException>(() => Call("scsi_lun_remove", new JsonObject { ["export"] = "s1", ["lun"] = 0 }));
        Assert.Equal(RpcErrorCode.InvalidParams, last.Code);
    }

    [Fact]
    public void Hot_plug_errors_change_nothing()
    {
        using var runtime = TargetRuntime.Start(new TargetSettings { Devices = [] }, NullLoggerFactory.Instance, new ManagementSettings { RpcSocket = Rpc });
        Call("disk_create", new JsonObject { ["name"] = "l0", ["backend"] = "ram:8M" });
        Call("disk_create", new JsonObject { ["name"] = "b", ["backend"] = "ram:8M" });
        Call("disk_create", new JsonObject { ["name"] = "x", ["backend"] = "ram:8M" });
        Call("export_create_scsi", new JsonObject
        {
            ["name"] = "s1", ["socket"] = Path.Combine(_dir, "s1.sock"), ["luns"] = new JsonArray(new JsonObject { ["disk"] = "l0" }),
        });
        Call("export_create_blk", new JsonObject { ["name"] = "vm", ["socket"] = Path.Combine(_dir, "vm.sock"), ["disk"] = "b" });
        Assert.Equal(RpcErrorCode.InvalidParams, Assert.Throws<ManagementException>(() =>
            Call("scsi_lun_add", new JsonObject { ["export"] = "s1", ["lun"] = 0, ["disk"] = "x" })).Code);      // address taken
        Assert.Equal(RpcErrorCode.InUse, Assert.Throws<ManagementException>(() =>
            Call("scsi_lun_add", new JsonObject { ["export"] = "s1", ["lun"] = 1, ["disk"] = "b" })).Code);      // b is vm's
        Assert.Equal(RpcErrorCode.InvalidParams, Assert.Throws<ManagementException>(() =>
            Call("scsi_lun_add", new JsonObject { ["export"] = "vm", ["lun"] = 1, ["disk"] = "x" })).Code);      // not scsi
        Assert.Equal(RpcErrorCode.NotFound, Assert.Throws<ManagementException>(() =>
            Call("scsi_lun_remove", new JsonObject { ["export"] = "s1", ["lun"] = 5 })).Code);
        Assert.Single(Call("export_list", new JsonObject { ["name"] = "s1" })!.AsArray()[0]!["luns"]!.AsArray());
        Assert.Empty(Call("disk_list", new JsonObject { ["name"] = "x" })!.AsArray()[0]!["exports"]!.AsArray());
    }
}
