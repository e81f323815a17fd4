using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;
using BlkTarget.Configuration;
using BlkTarget.Management;
using BlkTarget.Vhost.Protocol;
using BlkTarget.Vhost.Reactor;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlkTarget.Tests;

/// <summary>The management model, its RPC handlers and framing (raw lines over the socket, as socat sends them), and
/// the config it persists.</summary>
public sealed class ManagementTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("blkt-mgmt-unit-").FullName;
    private readonly ReactorPool _reactors = new(null, 1, TimeSpan.FromMicroseconds(50), NullLogger.Instance);
    private readonly TargetModel _model;
    private readonly ManagementService _service;
    private readonly JsonRpcServer _rpc;

    public ManagementTests()
    {
        _model = new TargetModel(_reactors, new VhostUserSessionOptions(), NullLoggerFactory.Instance);
        _service = new ManagementService(_model, new ConfigStore(new TargetSettings { Devices = [] }), Path.Combine(_dir, "target.json"));
        _rpc = JsonRpcServer.Start(Path.Combine(_dir, "rpc.sock"), new ManagementMethods(_service), NullLogger.Instance);
    }

    /// <summary>Writes <paramref name="lines"/> to a new connection and closes its sending side, as `socat` does at
    /// the end of its input; returns every line the server sent before closing.</summary>
    private List<string> Exchange(params string[] lines)
    {
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        socket.Connect(new UnixDomainSocketEndPoint(_rpc.SocketPath));
        socket.ReceiveTimeout = 30_000;
        using var stream = new NetworkStream(socket);
        stream.Write(Encoding.UTF8.GetBytes(string.Concat(lines.Select(l => l + "\n"))));
        socket.Shutdown(SocketShutdown.Send);
        using var reader = new StreamReader(stream, Encoding.UTF8);
        var replies = new List<string>();
        while (reader.ReadLine() is { } reply) replies.Add(reply);
        return replies;
    }

    private JsonObject Reply(string request) => (JsonObject)JsonNode.Parse(Assert.Single(Exchange(request)))!;

    private JsonObject Call(string method, string parameters) =>
        Reply($$"""{"jsonrpc":"2.0","id":1,"method":"{{method}}","params":{{parameters}}}""");

    private static int ErrorCode(JsonObject reply) => (int)reply["error"]!["code"]!;

    [Theory]
    [InlineData("""{"name":"d1"}""", "parameter 'backend' is required")]
    [InlineData("""{"name":"d1","backend":"ram:1G","sharde":true}""", "unknown parameter 'sharde'")]
    [InlineData("""{"name":"d1","backend":"disk:1G"}""", "unknown kind")]
    [InlineData("""{"name":"d 1","backend":"ram:1G"}""", "disk name 'd 1'")]
    [InlineData("""{"name":"d1","backend":"ram:1G","block_size":1024}""", "block size must be 512 or 4096")]
    [InlineData("""{"name":"d1","backend":"ram:1G","create":"1G"}""", "create only applies to file and image")]
    [InlineData("""{"name":"d1","backend":"ram:1G","read_only":"yes"}""", "'read_only' must be true or false")]
    [InlineData("""[{"name":"d1"}]""", "params must be an object")]
    // Two positional params match no method of one parameter: StreamJsonRpc's own message, same code.
    [InlineData("""["d1","ram:1G"]""", "Unable to find method 'disk_create/2'")]
    public void Bad_disk_create_params_are_invalid_params_with_one_line(string parameters, string expected)
    {
        var reply = Call("disk_create", parameters);
        Assert.Equal((int)RpcErrorCode.InvalidParams, ErrorCode(reply));
        string message = (string)reply["error"]!["message"]!;
        Assert.Contains(expected, message);
        Assert.DoesNotContain('\n', message);
        Assert.Empty(_model.Disks);
    }

    [Fact]
    public void Qos_set_checks_its_params_limits_scsi_exports_too_and_a_reload_changes_limits_in_place()
    {
        Call("disk_create", """{"name":"d1","backend":"ram:1M"}""");
        Call("export_create_blk", $$"""{"name":"vm1","socket":"{{_dir}}/vm1.sock","disk":"d1"}""");
        Call("disk_create", """{"name":"d2","backend":"ram:1M"}""");
        Assert.Null(Call("export_create_scsi", $$"""{"name":"s","socket":"{{_dir}}/s.sock","luns":[{"disk":"d2"}]}""")["error"]);
        Assert.Equal((int)RpcErrorCode.InvalidParams, ErrorCode(Call("qos_set", """{"iops_total":5}""")));
        Assert.Equal((int)RpcErrorCode.InvalidParams, ErrorCode(Call("qos_set", """{"export":"vm1","disk":"d1","iops_total":5}""")));
        Assert.Equal((int)RpcErrorCode.InvalidParams, ErrorCode(Call("qos_set", """{"export":"vm1","iops_totl":5}""")));
        Assert.Equal((int)RpcErrorCode.InvalidParams, ErrorCode(Call("qos_set", """{"export":"vm1","iops_total":-1}""")));
        Assert.Null(Call("qos_set", """{"export":"s","iops_total":5}""")["error"]);
        Assert.True(_model.Exports.Single(e => e.Spec.Name == "s").Qos.IsLimited);
        Assert.True(_model.Exports.Single(e => e.Spec.Name == "vm1").Qos.Limits.IsUnlimited);
        var set = Call("qos_set", """{"export":"vm1","iops_total":2000,"bps_write":"1M"}""");
        Assert.Equal(1UL << 20, (ulong)set["result"]!["qos"]!["bps_write"]!);
        Assert.True(_model.Exports.Single(e => e.Spec.Name == "vm1").Qos.IsLimited);

        // The file as written, edited by hand (string byte rates), reloaded: the export is kept, its limits change.
        string path = Path.Combine(_dir, "target.json");
        string text = File.ReadAllText(path);
        Assert.Contains("\"iopsTotal\": 2000", text);
        File.WriteAllText(path, text.Replace("\"iopsTotal\": 2000", "\"iopsRead\": 300, \"bpsRead\": \"20M\""));
        var server = _model.Exports.Single(e => e.Spec.Name == "vm1").Server;
        var outcome = ConfigReload.Apply(_model, ConfigFile.Load(path));
        Assert.Empty(outcome.Refused);
        Assert.Contains("export vm1: QoS iops-read=300 bps-read=20971520 bps-write=1048576", outcome.Applied);
        Assert.Same(server, _model.Exports.Single(e => e.Spec.Name == "vm1").Server);
        Assert.Equal(new Vhost.Qos.QosLimits { ReadIops = 300, ReadBytesPerSecond = 20 << 20, WriteBytesPerSecond = 1 << 20 },
            _model.Exports.Single(e => e.Spec.Name == "vm1").Qos.Limits);
        Assert.Null(Call("qos_set", """{"export":"vm1","iops_read":0,"bps_read":0,"bps_write":0}""")["error"]);   // 0 lifts each
        Assert.False(_model.Exports.Single(e => e.Spec.Name == "vm1").Qos.IsLimited);
    }

    [Fact]
    public void A_scsi_export_names_its_lun_disks_and_is_persisted()
    {
        Call("disk_create", """{"name":"l0","backend":"ram:1M"}""");
        Call("disk_create", """{"name":"l1","backend":"ram:2M","block_size":4096}""");
        var bad = Call("export_create_scsi", $$"""{"name":"s","socket":"{{_dir}}/s.sock","luns":[{"disk":"l0","lnu":1}]}""");
        Assert.Equal((int)RpcErrorCode.InvalidParams, ErrorCode(bad));
        var twice = Call("export_create_scsi", $$"""{"name":"s","socket":"{{_dir}}/s.sock","luns":[{"disk":"l0"},{"disk":"l1"}]}""");
        Assert.Contains("defined twice", (string)twice["error"]!["message"]!);
        Assert.False(File.Exists(Path.Combine(_dir, "s.sock")));
        var made = Call("export_create_scsi", $$"""{"name":"s","socket":"{{_dir}}/s.sock","queues":2,"luns":[{"disk":"l0"},{"target":1,"lun":3,"disk":"l1","serial":"L1"}]}""");
        Assert.Null(made["error"]);
        Assert.Equal(4, made["result"]!["queue_reactors"]!.AsArray().Count);   // control, event and 2 request queues
        Assert.Equal((int)RpcErrorCode.InUse, ErrorCode(Call("disk_delete", """{"name":"l1"}""")));
        var export = ModelPlan.From(ConfigFile.Load(Path.Combine(_dir, "target.json"))).Exports.Single();
        Assert.Equal(_model.Exports.Single().Spec.Luns, export.Luns);
        Assert.Equal(("scsi", 2), (export.Kind, export.Queues));
    }

    [Fact]
    public void A_file_backs_one_disk()
    {
        string image = Path.Combine(_dir, "one.img");
        Assert.Null(Call("disk_create", $$"""{"name":"a","backend":"file:{{image}}","create":"1M"}""")["error"]);
        var twice = Call("disk_create", $$"""{"name":"b","backend":"file:{{_dir}}/./one.img,cache=writeback"}""");
        Assert.Equal((int)RpcErrorCode.AlreadyExists, ErrorCode(twice));
        Assert.Equal(["a"], _model.Disks.Select(d => d.Spec.Name));
    }

    [Fact]
    public void Json_rpc_framing_errors_use_the_standard_codes_and_notifications_get_no_answer()
    {
        Assert.Equal((int)RpcErrorCode.MethodNotFound, ErrorCode(Reply("""{"jsonrpc":"2.0","id":"x","method":"bdev_get_bdevs"}""")));
        Assert.Equal("x", (string)Reply("""{"jsonrpc":"2.0","id":"x","method":"nope"}""")["id"]!);
        // A notification runs unanswered: the only reply is the request's after it (a connection's calls run in order).
        var replies = Exchange("""{"jsonrpc":"2.0","method":"disk_create","params":{"name":"n","backend":"ram:1M"}}""",
            """{"jsonrpc":"2.0","id":2,"method":"disk_list"}""");
        Assert.Equal(2, (int)JsonNode.Parse(Assert.Single(replies))!["id"]!);
        Assert.Single(_model.Disks);
        // StreamJsonRpc closes the connection, unanswered, on a line that is not JSON and on a batch (no batch support).
        Assert.Empty(Exchange("{nope"));
        Assert.Empty(Exchange("""[{"jsonrpc":"2.0","id":1,"method":"disk_list"},{"jsonrpc":"2.0","id":2,"method":"export_list"}]"""));
        Assert.DoesNotContain(Exchange("""{"jsonrpc":"2.0","id":1,"method":"disk_list"}""", "{nope", """{"jsonrpc":"2.0","id":3,"method":"disk_list"}"""),
            r => (int)JsonNode.Parse(r)!["id"]! == 3);
    }

    [Fact]
    public void A_disk_goes_writable_to_one_export_unless_shared_or_read_only()
    {
        Call("disk_create", """{"name":"excl","backend":"ram:1M"}""");
        Call("disk_create", """{"name":"shared","backend":"ram:1M","shared":true}""");
        Call("disk_create", """{"name":"ro","backend":"ram:1M","read_only":true}""");
        foreach (var disk in new[] { "excl", "shared", "ro" })
            Assert.Null(Call("export_create_blk", $$"""{"name":"{{disk}}-a","socket":"{{_dir}}/{{disk}}-a.sock","disk":"{{disk}}"}""")["error"]);
        var refused = Call("export_create_blk", $$"""{"name":"excl-b","socket":"{{_dir}}/excl-b.sock","disk":"excl"}""");
        Assert.Equal((int)RpcErrorCode.InUse, ErrorCode(refused));
        Assert.Contains("unless created shared", (string)refused["error"]!["message"]!);
        Assert.False(File.Exists(Path.Combine(_dir, "excl-b.sock")));
        Assert.Null(Call("export_create_blk", $$"""{"name":"shared-b","socket":"{{_dir}}/shared-b.sock","disk":"shared"}""")["error"]);
        Assert.Null(Call("export_create_blk", $$"""{"name":"ro-b","socket":"{{_dir}}/ro-b.sock","disk":"ro"}""")["error"]);
        Assert.Equal((int)RpcErrorCode.AlreadyExists,
            ErrorCode(Call("export_create_blk", $$"""{"name":"other","socket":"{{_dir}}/ro-b.sock","disk":"ro"}""")));
        Assert.Equal((int)RpcErrorCode.InUse, ErrorCode(Call("disk_delete", """{"name":"shared"}""")));
        Assert.Equal((int)RpcErrorCode.NotFound, ErrorCode(Call("export_delete", """{"name":"nope"}""")));
    }

    [Fact]
    public void A_blk_export_of_a_shared_disk_takes_the_compare_and_write_gate_its_scsi_exports_use()
    {
        Call("disk_create", """{"name":"shared","backend":"ram:1M","shared":true}""");
        Call("disk_create", """{"name":"excl","backend":"ram:1M"}""");
        Assert.Null(Call("export_create_blk", $$"""{"name":"b","socket":"{{_dir}}/b.sock","disk":"shared"}""")["error"]);
        Assert.Null(Call("export_create_scsi", $$"""{"name":"s","socket":"{{_dir}}/s.sock","luns":[{"disk":"shared"}]}""")["error"]);
        Assert.Null(Call("export_create_blk", $$"""{"name":"e","socket":"{{_dir}}/e.sock","disk":"excl"}""")["error"]);
        var gate = _model.Disks.Single(d => d.Spec.Name == "shared").LogicalUnit.Gate;
        var exports = _model.Exports.ToDictionary(e => e.Spec.Name, e => e.Device);
        Assert.Same(gate, ((BlkTarget.Vhost.Scsi.VirtioScsiDevice)exports["s"]).Context.Luns.Single().Shared.Gate);
        Assert.Same(gate, ((BlkTarget.Vhost.Blk.VirtioBlkDevice)exports["b"]).Context.Gate);
        // No other export can write an unshared disk: its blk writes skip the gate altogether.
        Assert.Null(((BlkTarget.Vhost.Blk.VirtioBlkDevice)exports["e"]).Context.Gate);
    }

    [Fact]
    public void The_persisted_config_reads_back_as_the_same_disks_and_exports()
    {
        Call("disk_create", """{"name":"d1","backend":"ram:3M","block_size":4096,"shared":true}""");
        Call("disk_create", """{"name":"d2","backend":"ram:1G","read_only":true}""");
        Call("export_create_blk", $$"""{"name":"vm1","socket":"{{_dir}}/vm1.sock","disk":"d1","queues":3,"serial":"S1","write_cache":false}""");
        var plan = ModelPlan.From(ConfigFile.Load(Path.Combine(_dir, "target.json")));
        Assert.Equal(_model.Disks.Select(d => d.Spec), plan.Disks);
        Assert.Equal(_model.Exports.Select(e => e.Spec.Name), plan.Exports.Select(e => e.Name));
        var export = plan.Exports.Single();
        Assert.Equal((3, "S1", false, "d1"), (export.Queues, export.Serial, export.WriteCache, export.Disk));
    }

    [Fact]
    public void The_devices_schema_becomes_disks_and_exports()
    {
        var settings = new TargetSettings
        {
            Devices =
            [
                new DeviceSettings { Name = "vm1", Socket = "/tmp/vm1.sock", Backend = new BackendSpec("ram", 1 << 20), Queues = 2, Serial = "S" },
                new DeviceSettings
                {
                    Name = "s", Kind = "scsi", Socket = "/tmp/s.sock", Backend = new BackendSpec("ram", 1 << 20),
                    Luns =
                    [
                        new ScsiLunSettings { Target = 0, Lun = 0, Backend = new BackendSpec("ram", 1 << 20) },
                        new ScsiLunSettings { Target = 1, Lun = 2, Backend = new BackendSpec("ram", 2 << 20), ReadOnly = true },
                    ],
                },
            ],
        };
        var plan = ModelPlan.From(settings);
        Assert.Equal(["vm1", "s-0-0", "s-1-2"], plan.Disks.Select(d => d.Name));
        Assert.True(plan.Disks[2].ReadOnly);
        Assert.Equal("vm1", plan.Exports[0].Disk);
        Assert.Equal(["s-0-0", "s-1-2"], plan.Exports[1].Luns.Select(l => l.Disk));
    }

    public void Dispose()
    {
        _rpc.Dispose();
        _model.StopExports();
        _reactors.Dispose();
        _model.Dispose();
        Directory.Delete(_dir, recursive: true);
    }
}
