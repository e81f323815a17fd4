using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using BlkTarget.Configuration;
using BlkTarget.Management;

namespace BlkTarget.Commands;

/// <summary>
/// The RPC client commands: `blktarget disk create|delete|resize|list`, `blktarget export create-blk|delete|list`,
/// `blktarget config save`. Each calls one method on the target at --rpc-socket (same default as serve) and
/// prints a table or a line (or the JSON result with --json). Errors: one line `blktarget: ...` on stderr, exit 1.
/// </summary>
public static class ManagementCommands
{
    private static Option<string?> RpcSocketOption() => new("--rpc-socket") { Description = "The target's management socket (default as for serve)" };
    private static Option<bool> JsonOption() => new("--json") { Description = "Print the JSON result" };

    public static Command Disk()
    {
        var name = new Option<string?>("--name") { Description = "Disk name (letters, digits, . _ -)" };
        var backend = new Option<string?>("--backend") { Description = "Backend: " + BackendSpec.Usage };
        var create = new Option<string?>("--create") { Description = "With file:/image:, create it with this size first (e.g. 10G)" };
        var blockSize = new Option<int?>("--block-size") { Description = "Logical block size: 512 (default) or 4096" };
        var readOnly = new Option<bool>("--read-only") { Description = "Open read-only" };
        var shared = new Option<bool>("--shared") { Description = "May be attached writable to several exports (live migration)" };
        var createCommand = Client("create", "Open a backend as a named disk", "disk_create", [name, backend, create, blockSize, readOnly, shared],
            parse => new JsonObject
            {
                ["name"] = Required(parse, name), ["backend"] = Required(parse, backend), ["create"] = parse.GetValue(create),
                ["block_size"] = parse.GetValue(blockSize), ["read_only"] = parse.GetValue(readOnly), ["shared"] = parse.GetValue(shared),
            },
            (_, r) => $"disk {r!["name"]}: {r["backend"]}, {r["size_bytes"]} bytes");
        return new Command("disk", "Manage disks of a running target")
        {
            createCommand,
            NameCommand("delete", "Close a disk (refused while an export uses it)", "disk_delete", n => $"disk {n} deleted"),
            ResizeCommand(),
            ListCommand("list", "List disks", "disk_list", ["NAME", "BACKEND", "SIZE", "BLOCK", "MODE", "EXPORTS", "QOS"], d =>
            [
                (string)d["name"]!, (string)d["backend"]!, SizeParser.Format((ulong)d["size_bytes"]!), d["block_size"]!.ToString(),
                ((bool)d["read_only"]! ? "ro" : "rw") + ((bool)d["shared"]! ? ",shared" : ""),
                string.Join(",", d["exports"]!.AsArray().Select(e => (string)e!)) is { Length: > 0 } s ? s : "-",
                d["qos"] is { } q ? FormatQos(q) : "-",
            ]),
        };
    }

    public static Command Export()
    {
        var name = new Option<string?>("--name") { Description = "Export name (letters, digits, . _ -)" };
        var socket = new Option<string?>("--socket") { Description = "Unix socket QEMU connects to" };
        var disk = new Option<string?>("--disk") { Description = "The disk to export" };
        var queues = new Option<int?>("--queues") { Description = "Virtqueues (1-256, default 1)" };
        var serial = new Option<string?>("--serial") { Description = "Serial the guest sees (at most 20 characters; default the name)" };
        var noWriteCache = new Option<bool>("--no-write-cache") { Description = "The guest sees no volatile write cache" };
        var createBlk = Client("create-blk", "Serve a disk as a vhost-user-blk device on a socket", "export_create_blk",
            [name, socket, disk, queues, serial, noWriteCache],
            parse => new JsonObject
            {
                ["name"] = Required(parse, name), ["socket"] = Required(parse, socket), ["disk"] = Required(parse, disk),
                ["queues"] = parse.GetValue(queues), ["serial"] = parse.GetValue(serial),
                ["write_cache"] = parse.GetValue(noWriteCache) ? false : null,
            },
            (_, r) => $"export {r!["name"]}: vhost-user-blk on {r["socket"]}, disk {r["disk"]}, {r["queues"]} queue(s)");
        var scsiName = new Option<string?>("--name") { Description = "Export name (letters, digits, . _ -)" };
        var scsiSocket = new Option<string?>("--socket") { Description = "Unix socket QEMU connects to" };
        var lun = new Option<string[]>("--lun") { Description = "TARGET:LUN=DISK (repeat for more LUNs), e.g. 0:0=d1", AllowMultipleArgumentsPerToken = false };
        var scsiQueues = new Option<int?>("--queues") { Description = "Request queues (1-254, default 1)" };
        var scsiSerial = new Option<string?>("--serial") { Description = "Serial the LUNs' serials derive from (default the name)" };
        var createScsi = Client("create-scsi", "Serve disks as LUNs of a vhost-user-scsi device on a socket", "export_create_scsi",
            [scsiName, scsiSocket, lun, scsiQueues, scsiSerial],
            parse => new JsonObject
            {
                ["name"] = Required(parse, scsiName), ["socket"] = Required(parse, scsiSocket),
                ["luns"] = new JsonArray((parse.GetValue(lun) ?? []).Select(l => (JsonNode?)ParseLun(l)).ToArray()),
                ["queues"] = parse.GetValue(scsiQueues), ["serial"] = parse.GetValue(scsiSerial),
            },
            (_, r) => $"export {r!["name"]}: vhost-user-scsi on {r["socket"]}, LUNs "
                + string.Join(", ", r["luns"]!.AsArray().Select(l => $"{l!["target"]}:{l["lun"]}={l["disk"]}")) + $", {r["queues"]} request queue(s)");
        return new Command("export", "Manage exports (vhost-user devices) of a running target")
        {
            createBlk,
            createScsi,
            NameCommand("delete", "Stop an export (a connected frontend is drained and disconnected)", "export_delete", n => $"export {n} deleted"),
            ListCommand("list", "List exports (--json: negotiated features and per-queue state too)", "export_list",
                ["NAME", "KIND", "SOCKET", "DISK", "QUEUES", "CONNECTED", "IN FLIGHT", "QOS"], e =>
            [
                (string)e["name"]!, (string)e["kind"]!, (string)e["socket"]!,
                e["disk"] is { } d ? (string)d! : string.Join(",", e["luns"]!.AsArray().Select(l => $"{l!["target"]}:{l["lun"]}={l["disk"]}")),
                e["queues"]!.ToString(), (bool)e["connected"]! ? "yes" : "no",
                e["frontend"] is { } f ? f["in_flight"]!.ToString() : "-",
                e["qos"] is { } q ? FormatQos(q) : "-",
            ]),
        };
    }

    public static Command Config()
    {
        var path = new Argument<string?>("PATH") { Description = "Where to write (default: the file the target persists to)", Arity = ArgumentArity.ZeroOrOne };
        var save = Client("save", "Write the target's disks and exports to a config file", "config_save", [path],
            parse => new JsonObject { ["path"] = parse.GetValue(path) is { } p ? Path.GetFullPath(p) : null },
            (_, r) => $"saved {r!["path"]}");
        return new Command("config", "The running target's configuration") { save };
    }

    /// <summary>`blktarget lun add|remove`: SCSI LUN hot-plug on a running export.</summary>
    public static Command Lun()
    {
        var export = new Option<string?>("--export") { Description = "The scsi export" };
        var address = new Option<string?>("--lun") { Description = "TARGET:LUN, e.g. 0:1" };
        var disk = new Option<string?>("--disk") { Description = "The disk behind the new LUN" };
        var serial = new Option<string?>("--serial") { Description = "VPD 80h serial (default: EXPORT-TARGET-LUN)" };
        var add = Client("add", "Hot-add a LUN to a running scsi export; the guest finds it without a rescan", "scsi_lun_add",
            [export, address, disk, serial],
            parse =>
            {
                var (t, l) = ParseAddress(Required(parse, address));
                return new JsonObject
                {
                    ["export"] = Required(parse, export), ["target"] = t, ["lun"] = l, ["disk"] = Required(parse, disk), ["serial"] = parse.GetValue(serial),
                };
            },
            (parse, _) => $"export {parse.GetValue(export)}: LUN {parse.GetValue(address)} added (disk {parse.GetValue(disk)})");
        var exportR = new Option<string?>("--export") { Description = "The scsi export" };
        var addressR = new Option<string?>("--lun") { Description = "TARGET:LUN, e.g. 0:1" };
        var remove = Client("remove", "Hot-remove a LUN (its commands drain first; the guest drops it)", "scsi_lun_remove", [exportR, addressR],
            parse =>
            {
                var (t, l) = ParseAddress(Required(parse, addressR));
                return new JsonObject { ["export"] = Required(parse, exportR), ["target"] = t, ["lun"] = l };
            },
            (parse, _) => $"export {parse.GetValue(exportR)}: LUN {parse.GetValue(addressR)} removed");
        return new Command("lun", "Hot-plug LUNs of a running scsi export") { add, remove };
    }

    /// <summary>`blktarget qos set EXPORT | --disk NAME [--iops-total N] ...`: the qos_set RPC. Limits left out keep
    /// their value; 0 lifts one.</summary>
    public static Command Qos()
    {
        var export = new Argument<string?>("EXPORT") { Description = "The export to limit (all its queues share the limits)", Arity = ArgumentArity.ZeroOrOne };
        var disk = new Option<string?>("--disk") { Description = "Limit this disk instead (every export of it shares the limits)" };
        var rates = new (string Option, string Param, string Description)[]
        {
            ("--iops-read", "iops_read", "Read requests per second (0: unlimited)"),
            ("--iops-write", "iops_write", "Write requests per second (0: unlimited)"),
            ("--iops-total", "iops_total", "Read + write requests per second (0: unlimited)"),
            ("--bps-read", "bps_read", "Bytes read per second, e.g. 50M (0: unlimited)"),
            ("--bps-write", "bps_write", "Bytes written per second, e.g. 50M (0: unlimited)"),
            ("--bps-total", "bps_total", "Bytes read + written per second, e.g. 100M (0: unlimited)"),
            ("--burst-ms", "burst_ms", "Burst: this many milliseconds' worth of each rate after an idle spell (0: one second's)"),
        };
        var options = rates.Select(r => (Option: new Option<string?>(r.Option) { Description = r.Description }, r.Param)).ToList();
        var set = Client("set", "Change an export's or a disk's IOPS and bandwidth limits at run time (RPC qos_set; persisted)", "qos_set",
            [export, disk, .. options.Select(o => (Symbol)o.Option)],
            parse =>
            {
                string? e = parse.GetValue(export), d = parse.GetValue(disk);
                if (e is null && d is null) throw new ConfigurationException("give an EXPORT or --disk NAME");
                if (e is not null && d is not null) throw new ConfigurationException("give an EXPORT or --disk NAME, not both");
                var p = new JsonObject { ["export"] = e, ["disk"] = d };
                foreach (var (option, param) in options)
                    if (parse.GetValue(option) is { } text)
                        p[param] = ulong.TryParse(text, out ulong n) ? n : text;    // byte rates may carry units; the target checks
                return p;
            },
            (_, r) => $"{(r!["disk"] is { } d ? $"disk {d}" : $"export {r["export"]}")}: {FormatQos(r["qos"]!)}");
        return new Command("qos", "IOPS and bandwidth limits of exports and disks") { set };
    }

    /// <summary>"iops-total=2000 bps-read=10M burst-ms=100", or "unlimited".</summary>
    internal static string FormatQos(JsonNode q)
    {
        var parts = new List<string>();
        foreach (var (key, name, bytes) in new[] { ("iops_read", "iops-read", false), ("iops_write", "iops-write", false), ("iops_total", "iops-total", false),
                     ("bps_read", "bps-read", true), ("bps_write", "bps-write", true), ("bps_total", "bps-total", true), ("burst_ms", "burst-ms", false) })
        {
            ulong v = (ulong)q[key]!;
            if (v != 0) parts.Add($"{name}={(bytes ? SizeParser.Format(v) + "/s" : v.ToString())}");
        }
        return parts.Count == 0 ? "unlimited" : string.Join(" ", parts);
    }

    /// <summary>`blktarget stats [--json] [--reset] [--disk NAME] [NAME]`: request statistics of every export and disk,
    /// of export NAME, or of one disk (<see cref="Monitoring.StatsJson"/> for the JSON).</summary>
    public static Command Stats()
    {
        var name = new Argument<string?>("NAME") { Description = "Only this export", Arity = ArgumentArity.ZeroOrOne };
        var disk = new Option<string?>("--disk") { Description = "Only this disk" };
        var reset = new Option<bool>("--reset") { Description = "Print the counts so far, then count from zero" };
        return Client("stats", "Request statistics: ops, bytes, errors, latency percentiles per export and disk", "stats", [name, disk, reset],
            parse => new JsonObject { ["export"] = parse.GetValue(name), ["disk"] = parse.GetValue(disk), ["reset"] = parse.GetValue(reset) ? true : null },
            (_, r) => Monitoring.StatsText.Render(r!).TrimEnd('\n'));
    }

    private static (int Target, int Lun) ParseAddress(string text)
    {
        int colon = text.IndexOf(':');
        if (colon < 0 || !int.TryParse(text[..colon], out int target) || !int.TryParse(text[(colon + 1)..], out int lun))
            throw new ConfigurationException($"--lun: '{text}' is not TARGET:LUN, e.g. 0:1");
        return (target, lun);
    }

    private static Command ResizeCommand()
    {
        var name = new Argument<string>("NAME") { Description = "The disk" };
        var size = new Argument<string>("SIZE") { Description = "The new, larger size (e.g. 20G, or bytes)" };
        return Client("resize", "Grow a disk online; running guests see the new size", "disk_resize", [name, size],
            parse => new JsonObject { ["name"] = parse.GetValue(name), ["size"] = parse.GetValue(size) },
            (_, r) => $"disk {r!["name"]}: {r["size_bytes"]} bytes"
                + (r["notified"]!.AsArray().Count is > 0 ? $", config change sent to {string.Join(", ", r["notified"]!.AsArray().Select(e => (string)e!))}" : ""));
    }

    private static Command NameCommand(string verb, string description, string method, Func<string, string> done)
    {
        var name = new Argument<string>("NAME") { Description = "The name" };
        return Client(verb, description, method, [name], parse => new JsonObject { ["name"] = parse.GetValue(name) }, (parse, _) => done(parse.GetValue(name)!));
    }

    private static Command ListCommand(string verb, string description, string method, string[] header, Func<JsonNode, string[]> row)
    {
        var name = new Argument<string?>("NAME") { Description = "Only this one", Arity = ArgumentArity.ZeroOrOne };
        var command = Client(verb, description, method, [name], parse => new JsonObject { ["name"] = parse.GetValue(name) },
            (_, result) => Table.Render(header, result!.AsArray().Select(n => (IReadOnlyList<string>)row(n!))).TrimEnd('\n'));
        return command;
    }

    private static Command Client(string verb, string description, string method, Symbol[] symbols, Func<ParseResult, JsonObject> parameters,
        Func<ParseResult, JsonNode?, string> human)
    {
        var rpcSocket = RpcSocketOption();
        var json = JsonOption();
        var command = new Command(verb, description) { rpcSocket, json };
        foreach (var symbol in symbols)
        {
            if (symbol is Option o) command.Options.Add(o);
            else if (symbol is Argument a) command.Arguments.Add(a);
        }
        command.SetAction(parse =>
        {
            try
            {
                var p = parameters(parse);
                foreach (var key in p.Where(kv => kv.Value is null).Select(kv => kv.Key).ToList()) p.Remove(key);
                var result = RpcClient.Call(parse.GetValue(rpcSocket) ?? RpcSocketPath.Default(), method, p);
                if (parse.GetValue(json))
                    Console.WriteLine(result?.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) ?? "null");
                else
                    Console.WriteLine(human(parse, result));
                return 0;
            }
            catch (ManagementException e)
            {
                return Program.Fail(e.Message);
            }
            catch (IOException e)
            {
                return Program.Fail(e.Message);
            }
            catch (ConfigurationException e)
            {
                return Program.Fail(e.Message);
            }
        });
        return command;
    }

    private static JsonObject ParseLun(string text)
    {
        int colon = text.IndexOf(':'), equals = text.IndexOf('=');
        if (colon < 0 || equals < colon || !int.TryParse(text[..colon], out int target) || !int.TryParse(text[(colon + 1)..equals], out int lunId)
            || equals == text.Length - 1)
            throw new ConfigurationException($"--lun: '{text}' is not TARGET:LUN=DISK, e.g. 0:0=d1");
        return new JsonObject { ["target"] = target, ["lun"] = lunId, ["disk"] = text[(equals + 1)..] };
    }

    private static string Required(ParseResult parse, Option<string?> option) =>
        parse.GetValue(option) ?? throw new ConfigurationException($"{option.Name} is required");
}
