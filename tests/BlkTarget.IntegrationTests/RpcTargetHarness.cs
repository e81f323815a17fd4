using System.Text.Json.Nodes;
using BlkTarget.Configuration;
using BlkTarget.Hosting;
using BlkTarget.Management;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlkTarget.IntegrationTests;

/// <summary>A temporary directory for a target started in process with its RPC socket there, and calls to it.</summary>
internal sealed class RpcTargetHarness(string prefix)
{
    public string Directory { get; } = System.IO.Directory.CreateTempSubdirectory(prefix).FullName;

    public string Rpc => Path.Combine(Directory, "rpc.sock");

    /// <summary>Starts a target (no devices unless <paramref name="settings"/> say so) serving RPC on <see cref="Rpc"/>;
    /// <paramref name="management"/> adds to those settings.</summary>
    public TargetRuntime Start(TargetSettings? settings = null, Func<ManagementSettings, ManagementSettings>? management = null) =>
        TargetRuntime.Start(settings ?? new TargetSettings { Devices = [] }, NullLoggerFactory.Instance,
            (management ?? (m => m))(new ManagementSettings { RpcSocket = Rpc }));

    public JsonNode? Call(string method, JsonObject? parameters = null) => RpcClient.Call(Rpc, method, parameters ?? []);

    public void Delete()
    {
        try { System.IO.Directory.Delete(Directory, recursive: true); }
        catch (IOException) { }
    }
}
