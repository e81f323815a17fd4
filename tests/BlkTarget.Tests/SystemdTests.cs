using System.Net.Sockets;
using System.Text;

namespace BlkTarget.Tests;

/// <summary>
/// `serve` under a service manager, with the real executable: sd_notify messages on a datagram socket we own (what
/// systemd provides as NOTIFY_SOCKET), READY=1 only once the sockets listen, WATCHDOG=1 keep-alives, STOPPING=1 on
/// SIGTERM; SIGHUP applying an edited config file; journal-style log lines; socket group and mode.
/// </summary>
public sealed class SystemdTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("blkt-systemd-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>A datagram socket standing in for systemd's notify socket.</summary>
    private sealed class NotifySocket : IDisposable
    {
        private readonly Socket _socket = new(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);

        public NotifySocket(string path)
        {
            Path = path;
            _socket.Bind(new UnixDomainSocketEndPoint(path));
        }

        public string Path { get; }

        /// <summary>The next message, or null after <paramref name="timeout"/>.</summary>
        public string? Receive(TimeSpan timeout)
        {
            if (!_socket.Poll((int)timeout.TotalMicroseconds, SelectMode.SelectRead)) return null;
            var buffer = new byte[4096];
            int n = _socket.Receive(buffer);
            return Encoding.UTF8.GetString(buffer, 0, n);
        }

        /// <summary>Receives until a message containing <paramref name="text"/>; every message seen in order.</summary>
        public List<string> ReceiveUntil(string text, TimeSpan timeout)
        {
            var seen = new List<string>();
            var deadline = DateTime.UtcNow + timeout;
            while (DateTime.UtcNow < deadline)
            {
                var message = Receive(deadline - DateTime.UtcNow);
                if (message is null) break;
                seen.Add(message);
                if (message.Contains(text)) return seen;
            }
            throw new TimeoutException($"no '{text}' within {timeout}; got: {string.Join(" | ", seen)}");
        }

        public void Dispose() => _socket.Dispose();
    }

    private static int SocketGroupOf(string path) =>
        int.Parse(System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("stat", ["-c", "%g", path]) { RedirectStandardOutput = true })!
            .StandardOutput.ReadToEnd().Trim());

    /// <summary>The group's id from /etc/group (written out by hand here, not through the code under test).</summary>
    private static int GroupId(string name) =>
        int.Parse(File.ReadLines("/etc/group").Select(l => l.Split(':')).First(f => f[0] == name)[2]);

    [Fact]
    public void Ready_comes_once_every_socket_listens_then_watchdog_keep_alives_and_stopping_on_sigterm()
    {
        using var notify = new NotifySocket(Path.Combine(_dir, "notify"));
        string socket = Path.Combine(_dir, "vm1.sock"), rpc = Path.Combine(_dir, "rpc.sock");
        using var target = TargetProcess.Start(
            new Dictionary<string, string> { ["NOTIFY_SOCKET"] = notify.Path, ["WATCHDOG_USEC"] = "400000" },
            "serve", "--socket", socket, "--backend", "ram:64M", "--rpc-socket", rpc);
        var beforeReady = notify.ReceiveUntil("READY=1", TimeSpan.FromSeconds(30));
        Assert.True(File.Exists(socket) && File.Exists(rpc), "READY=1 came before the sockets listened");
        Assert.DoesNotContain(beforeReady, m => m.Contains("WATCHDOG=1"));
        // Keep-alives every half of WATCHDOG_USEC while the (idle, asleep) reactor is healthy.
        Assert.Contains("WATCHDOG=1", notify.ReceiveUntil("WATCHDOG=1", TimeSpan.FromSeconds(5)).Last());
        Assert.Contains("WATCHDOG=1", notify.ReceiveUntil("WATCHDOG=1", TimeSpan.FromSeconds(5)).Last());
        target.Signal(TargetProcess.SIGTERM);
        notify.ReceiveUntil("STOPPING=1", TimeSpan.FromSeconds(30));
        Assert.Equal(0, target.WaitForExit(TimeSpan.FromSeconds(60)));
        Assert.False(File.Exists(socket));
    }

    [Fact]
    public void Sighup_applies_an_edited_config_file_like_rpcs_would()
    {
        string config = Path.Combine(_dir, "target.json"), rpc = Path.Combine(_dir, "rpc.sock");
        string s1 = Path.Combine(_dir, "s1.sock"), s2 = Path.Combine(_dir, "s2.sock");
        string Disk(string name) => $$"""{ "name": "{{name}}", "backend": "ram:16M" }""";
        string Export(string name, string socket, string disk) => $$"""{ "name": "{{name}}", "kind": "blk", "socket": "{{socket}}", "disk": "{{disk}}" }""";
        File.WriteAllText(config, $$"""{ "disks": [ {{Disk("d1")}} ], "exports": [ {{Export("vm1", s1, "d1")}} ] }""");
        using var target = TargetProcess.Start("serve", "--config", config, "--rpc-socket", rpc);
        target.WaitForSocket(s1, TimeSpan.FromSeconds(30));

        File.WriteAllText(config, $$"""{ "disks": [ {{Disk("d1")}}, {{Disk("d2")}} ], "exports": [ {{Export("vm1", s1, "d1")}}, {{Export("vm2", s2, "d2")}} ] }""");
        target.Signal(TargetProcess.SIGHUP);
        target.WaitForSocket(s2, TimeSpan.FromSeconds(30));
        target.WaitForOutput("SIGHUP: export vm2 created", TimeSpan.FromSeconds(10));

        File.WriteAllText(config, $$"""{ "disks": [ {{Disk("d2")}} ], "exports": [ {{Export("vm2", s2, "d2")}} ] }""");
        target.Signal(TargetProcess.SIGHUP);
        target.WaitForOutput("SIGHUP: disk d1 deleted", TimeSpan.FromSeconds(30));
        Assert.False(File.Exists(s1));
        Assert.True(File.Exists(s2));

        File.WriteAllText(config, "{ not json");
        target.Signal(TargetProcess.SIGHUP);
        target.WaitForOutput("nothing changed", TimeSpan.FromSeconds(10), stderr: true);
        Assert.True(File.Exists(s2));     // a file that does not load changes nothing
        target.Signal(TargetProcess.SIGTERM);
        Assert.Equal(0, target.WaitForExit(TimeSpan.FromSeconds(60)));
    }

    [Fact]
    public void Journal_logging_carries_syslog_priorities_and_sockets_get_the_configured_mode()
    {
        string socket = Path.Combine(_dir, "vm1.sock"), rpc = Path.Combine(_dir, "rpc.sock");
        var args = new List<string> { "serve", "--socket", socket, "--backend", "ram:16M", "--rpc-socket", rpc, "--socket-mode", "0660" };
        if (Environment.IsPrivilegedProcess) args.AddRange(["--socket-group", "daemon"]);   // chown to another group needs root
        using var target = TargetProcess.Start(new Dictionary<string, string> { ["JOURNAL_STREAM"] = "8:12345" }, [.. args]);
        target.WaitForOutput("export vm1: vhost-user-blk on", TimeSpan.FromSeconds(30));   // logged once the socket has its mode
        Assert.True(OperatingSystem.IsLinux());
        if (OperatingSystem.IsLinux())
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.GroupWrite, File.GetUnixFileMode(socket));
        if (Environment.IsPrivilegedProcess)
            Assert.Equal(SocketGroupOf(socket), GroupId("daemon"));
        Assert.Matches(@"(?m)^<6>blktarget: ", target.Stdout);
        Assert.DoesNotMatch(@"(?m)^\d\d:\d\d:\d\d", target.Stdout);   // journald stamps lines itself
        target.Signal(TargetProcess.SIGTERM);
        Assert.Equal(0, target.WaitForExit(TimeSpan.FromSeconds(60)));
    }
}

public sealed class ReactorHealthTests
{
    [Fact]
    public void A_reactor_awake_without_progress_between_two_looks_is_stuck_and_a_sleeping_or_busy_one_is_not()
    {
        long[] last = [0, 0, 0];
        Assert.Equal(-1, BlkTarget.Hosting.ReactorHealth.FirstStuck([(true, 5), (false, 9), (false, 1)], last));
        Assert.Equal([5L, 9L, 1L], last);
        // Reactor 0 still asleep, 1 advanced, 2 awake at the same heartbeat: stuck.
        Assert.Equal(2, BlkTarget.Hosting.ReactorHealth.FirstStuck([(true, 5), (false, 12), (false, 1)], last));
        Assert.Equal(-1, BlkTarget.Hosting.ReactorHealth.FirstStuck([(true, 5), (false, 13), (true, 1)], last));
    }
}
