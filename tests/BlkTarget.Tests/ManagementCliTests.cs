namespace BlkTarget.Tests;

/// <summary>`blktarget disk|export|config` against a running `blktarget serve`, both the real executable.</summary>
public sealed class ManagementCliTests : IDisposable
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);
    private readonly string _dir = Directory.CreateTempSubdirectory("blkt-mgmt-cli-").FullName;

    private string Rpc => Path.Combine(_dir, "rpc.sock");

    private (int Code, string Stdout, string Stderr) Client(params string[] args)
    {
        using var process = TargetProcess.Start([.. args, "--rpc-socket", Rpc]);
        int code = process.WaitForExit(Timeout);
        return (code, process.Stdout, process.Stderr);
    }

    [Fact]
    public void Disks_and_exports_made_by_the_cli_are_listed_saved_to_config_out_and_back_after_a_restart()
    {
        string config = Path.Combine(_dir, "out.json");
        string socket = Path.Combine(_dir, "vm1.sock");
        using (var target = TargetProcess.Start("serve", "--rpc-socket", Rpc, "--config-out", config))
        {
            target.WaitForSocket(Rpc, Timeout);
            Assert.Equal(0, Client("disk", "create", "--name", "d1", "--backend", "ram:64M").Code);
            var create = Client("export", "create-blk", "--name", "vm1", "--socket", socket, "--disk", "d1", "--queues", "2");
            Assert.Equal((0, $"export vm1: vhost-user-blk on {socket}, disk d1, 2 queue(s)\n"), (create.Code, create.Stdout));
            var list = Client("disk", "list");
            Assert.Equal(0, list.Code);
            Assert.Matches(@"^NAME +BACKEND +SIZE +BLOCK +MODE +EXPORTS +QOS\nd1 +ram:64M +64 MiB +512 +rw +vm1 +unlimited\n$", list.Stdout);
            Assert.Equal((0, "export vm1: iops-total=2000 bps-read=10 MiB/s\n"), Client("qos", "set", "vm1", "--iops-total", "2000", "--bps-read", "10M") is var q ? (q.Code, q.Stdout) : default);
            Assert.Equal((1, "blktarget: give an EXPORT or --disk NAME\n"), Client("qos", "set", "--iops-total", "5") is var n ? (n.Code, n.Stderr) : default);
            Assert.Equal((1, "blktarget: give an EXPORT or --disk NAME, not both\n"),
                Client("qos", "set", "vm1", "--disk", "d1", "--iops-total", "5") is var b ? (b.Code, b.Stderr) : default);
            var json = Client("export", "list", "--json");
            Assert.Contains("\"connected\": false", json.Stdout);

            var refused = Client("disk", "delete", "d1");
            Assert.Equal(1, refused.Code);
            Assert.Equal("blktarget: disk d1 is attached to export vm1; delete the export first\n", refused.Stderr);
            target.Signal(TargetProcess.SIGTERM);
            Assert.Equal(0, target.WaitForExit(Timeout));
        }
        Assert.False(File.Exists(socket));
        using (var target = TargetProcess.Start("serve", "--rpc-socket", Rpc, "--config", config))
        {
            target.WaitForSocket(socket, Timeout);
            Assert.Contains("vm1", Client("export", "list").Stdout);
            Assert.Contains("iops-total=2000 bps-read=10 MiB/s", Client("export", "list").Stdout);
            Assert.Equal(0, Client("export", "delete", "vm1").Code);
            Assert.Equal(0, Client("disk", "delete", "d1").Code);
            Assert.DoesNotContain("d1", File.ReadAllText(config));
            target.Signal(TargetProcess.SIGTERM);
            Assert.Equal(0, target.WaitForExit(Timeout));
        }
    }

    [Fact]
    public void Without_a_target_the_client_fails_with_one_line()
    {
        var result = Client("disk", "list");
        Assert.Equal(1, result.Code);
        var line = Assert.Single(result.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("blktarget: cannot reach the target at", line);
    }

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); }
        catch (IOException) { }
    }
}
