namespace BlkTarget.Tests;

/// <summary>The executable as a user meets it: exit codes, error lines, signals, socket files.</summary>
public sealed class CliTests : IDisposable
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);
    private readonly string _dir = Directory.CreateTempSubdirectory("blkt").FullName;

    private string SocketPath(string name) => Path.Combine(_dir, name);

    [Theory]
    [InlineData("serve", "--queues", "2")]
    [InlineData("serve", "--socket", "/tmp/x.sock")]
    [InlineData("serve", "--socket", "/tmp/x.sock", "--backend", "ram:0")]
    [InlineData("serve", "--socket", "/tmp/x.sock", "--backend", "ram:1G", "--queues", "0")]
    [InlineData("serve", "--socket", "/tmp/x.sock", "--backend", "ram:1G", "--block-size", "1024")]
    [InlineData("serve", "--socket", "/tmp/x.sock", "--backend", "ram:1G", "--cpus", "999")]
    [InlineData("serve", "--socket", "/tmp/x.sock", "--backend", "ram:1G", "--drain-timeout-s", "0")]
    [InlineData("serve", "--bogus")]
    [InlineData("serve", "--config", "/nonexistent/config.json")]
    [InlineData("serve", "--socket", "/tmp/x.sock", "--backend", "ram:1G", "--metrics-listen", "9101")]
    [InlineData("serve", "--socket", "/tmp/x.sock", "--backend", "ram:1G", "--metrics-listen", "metrics.example:9101")]
    public void Bad_arguments_exit_non_zero_with_one_line_on_stderr(params string[] args)
    {
        using var target = TargetProcess.Start(args);
        Assert.Equal(1, target.WaitForExit(Timeout));
        var lines = target.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines);
        Assert.StartsWith("blktarget: ", lines[0]);
    }

    [Fact]
    public void Sigterm_stops_the_target_removes_the_socket_and_exits_zero()
    {
        string socket = SocketPath("a.sock");
        using var target = TargetProcess.Start("serve", "--socket", socket, "--backend", "ram:64M", "--queues", "2");
        target.WaitForSocket(socket, Timeout);
        target.Signal(TargetProcess.SIGTERM);
        Assert.Equal(0, target.WaitForExit(Timeout));
        Assert.False(File.Exists(socket));
    }

    [Fact]
    public void Sigint_stops_the_target_too()
    {
        string socket = SocketPath("i.sock");
        using var target = TargetProcess.Start("serve", "--socket", socket, "--backend", "ram:64M");
        target.WaitForSocket(socket, Timeout);
        target.Signal(TargetProcess.SIGINT);
        Assert.Equal(0, target.WaitForExit(Timeout));
        Assert.False(File.Exists(socket));
    }

    [Fact]
    public void An_occupied_socket_path_is_refused_and_the_first_target_keeps_it()
    {
        string socket = SocketPath("b.sock");
        using var first = TargetProcess.Start("serve", "--socket", socket, "--backend", "ram:64M");
        first.WaitForSocket(socket, Timeout);
        using var second = TargetProcess.Start("serve", "--socket", socket, "--backend", "ram:64M");
        Assert.Equal(1, second.WaitForExit(Timeout));
        Assert.Contains("in use", second.Stderr);
        Assert.True(File.Exists(socket));
        first.Signal(TargetProcess.SIGTERM);
        Assert.Equal(0, first.WaitForExit(Timeout));
    }

    [Fact]
    public void A_socket_left_behind_by_a_killed_target_is_reused()
    {
        string socket = SocketPath("c.sock");
        using (var crashed = TargetProcess.Start("serve", "--socket", socket, "--backend", "ram:64M"))
        {
            crashed.WaitForSocket(socket, Timeout);
            crashed.Signal(TargetProcess.SIGKILL);
            crashed.WaitForExit(Timeout);
        }
        Assert.True(File.Exists(socket));
        using var target = TargetProcess.Start("serve", "--socket", socket, "--backend", "ram:64M");
        target.WaitForOutput("listening on", Timeout);
        target.Signal(TargetProcess.SIGTERM);
        Assert.Equal(0, target.WaitForExit(Timeout));
        Assert.False(File.Exists(socket));
    }

    [Fact]
    public void A_regular_file_at_the_socket_path_is_refused_and_left_alone()
    {
        string path = SocketPath("file.sock");
        File.WriteAllText(path, "precious");
        using var target = TargetProcess.Start("serve", "--socket", path, "--backend", "ram:64M");
        Assert.Equal(1, target.WaitForExit(Timeout));
        Assert.Contains("not a socket", target.Stderr);
        Assert.Equal("precious", File.ReadAllText(path));
    }

    [Fact]
    public void Config_file_serves_every_device()
    {
        string config = Path.Combine(_dir, "t.json");
        string a = SocketPath("d1.sock"), b = SocketPath("d2.sock");
        File.WriteAllText(config, $$"""
            { "devices": [
                { "name": "one", "socket": "{{a}}", "backend": "ram:64M", "queues": 2 },
                { "name": "two", "socket": "{{b}}", "backend": "ram:32M", "blockSize": 4096, "readOnly": true }
            ] }
            """);
        using var target = TargetProcess.Start("serve", "--config", config);
        target.WaitForSocket(a, Timeout);
        target.WaitForSocket(b, Timeout);
        target.Signal(TargetProcess.SIGTERM);
        Assert.Equal(0, target.WaitForExit(Timeout));
        Assert.False(File.Exists(a));
        Assert.False(File.Exists(b));
    }

    private string OneDeviceConfig(string socket)
    {
        string config = Path.Combine(_dir, "one.json");
        File.WriteAllText(config, $$"""{ "devices": [ { "name": "one", "socket": "{{socket}}", "backend": "ram:64M" } ] }""");
        return config;
    }

    [Theory]
    [InlineData("--read-only")]
    [InlineData("--queues", "2")]
    [InlineData("--queues", "1")]                   // explicit, even when it equals the default
    [InlineData("--serial", "S1")]
    [InlineData("--block-size", "4096")]
    [InlineData("--create", "1G")]
    [InlineData("--kind", "scsi")]
    [InlineData("--kind", "blk")]
    [InlineData("--backend", "ram:1G")]
    [InlineData("--socket", "/tmp/blkt-never.sock")]
    public void A_per_device_flag_next_to_a_config_file_is_refused_not_ignored(params string[] flag)
    {
        string socket = SocketPath("cfg.sock");
        using var target = TargetProcess.Start(["serve", "--config", OneDeviceConfig(socket), .. flag]);

        Assert.Equal(1, target.WaitForExit(Timeout));
        var line = Assert.Single(target.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Equal($"blktarget: --config describes the devices; {flag[0]} cannot be combined with it (set per-device options in the config file)", line);
        Assert.False(File.Exists(socket), "the config's device was served anyway");
    }

    [Fact]
    public void Every_refused_flag_is_named()
    {
        using var target = TargetProcess.Start("serve", "--config", OneDeviceConfig(SocketPath("cfg2.sock")), "--serial", "S", "--read-only", "--queues", "4");
        Assert.Equal(1, target.WaitForExit(Timeout));
        Assert.Equal("blktarget: --config describes the devices; --queues, --read-only, --serial cannot be combined with it (set per-device options in the config file)",
            target.Stderr.Trim());
    }

    [Fact]
    public void Target_wide_flags_work_with_a_config_file()
    {
        string socket = SocketPath("cfg3.sock");
        using var target = TargetProcess.Start("serve", "--config", OneDeviceConfig(socket), "--cpus", "0", "--idle-poll-us", "50", "--log-level", "warning");
        target.WaitForSocket(socket, Timeout);
        target.Signal(TargetProcess.SIGTERM);
        Assert.Equal(0, target.WaitForExit(Timeout));
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);
}
