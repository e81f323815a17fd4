using System.Diagnostics;

namespace BlkTarget.Tests.Nbd;

/// <summary>
/// An NBD server for one test, on a Unix socket in its own temporary directory: qemu-nbd serving a raw file
/// (<c>qemu-nbd -f raw -x exp --shared=N --cache=none</c>; qemu-nbd 7.2 allows multi-conn when it takes more than one
/// client, N > 1) or nbdkit's memory plugin (multi-conn too). The server is killed (exactly the process started here) on
/// <see cref="Stop"/>/<see cref="Dispose"/> and can be started again on the same socket and file (fault tests). A machine
/// without qemu-nbd or nbdkit fails the tests that need them (tests/e2e/install-deps.sh installs them): they never skip.
/// </summary>
public sealed class NbdTestServer : IDisposable
{
    private readonly string _dir;
    private readonly ulong _size;
    private readonly int _shared;
    private Process? _process;

    public enum Kind { QemuNbd, NbdkitMemory, Nbdkit }

    private string[] _nbdkitPlugin = [];

    private NbdTestServer(Kind kind, ulong size, bool readOnly, int shared)
    {
        _shared = shared;
        ServerKind = kind;
        _size = size;
        ReadOnly = readOnly;
        _dir = Path.Combine("/var/tmp", $"blkt-nbd-{Environment.ProcessId}-{Guid.NewGuid():N}"[..32]);
        Directory.CreateDirectory(_dir);
        if (kind == Kind.QemuNbd)
        {
            using var file = File.Create(FilePath);
            file.SetLength((long)size);
        }
    }

    public Kind ServerKind { get; }
    public bool ReadOnly { get; }
    public string SocketPath => Path.Combine(_dir, "nbd.sock");
    /// <summary>The raw file qemu-nbd serves.</summary>
    public string FilePath => Path.Combine(_dir, "disk.img");
    /// <summary>The URI libnbd takes (export "exp" for qemu-nbd, the default export for nbdkit).</summary>
    public string Uri => ServerKind == Kind.QemuNbd ? $"nbd+unix:///exp?socket={SocketPath}" : $"nbd+unix:///?socket={SocketPath}";

    /// <param name="shared">qemu-nbd's --shared: how many clients at once (1: no multi-conn).</param>
    public static NbdTestServer Start(Kind kind, ulong size, bool readOnly = false, int shared = 4)
    {
        return new NbdTestServer(kind, size, readOnly, shared).Started();
    }

    /// <summary>nbdkit with the plugin (and filters) of <paramref name="arguments"/>, e.g. an eval plugin that lacks
    /// some capabilities; <paramref name="arguments"/> gets <see cref="FilePath"/> (a file of <paramref name="size"/>
    /// bytes) for scripts that serve it.</summary>
    public static NbdTestServer StartNbdkit(ulong size, Func<string, string[]> arguments)
    {
        var server = new NbdTestServer(Kind.Nbdkit, size, readOnly: false, shared: 1);
        server._nbdkitPlugin = arguments(server.FilePath);
        using (var file = File.Create(server.FilePath)) file.SetLength((long)size);
        return server.Started();
    }

    /// <summary>Starts this server for the first time; disposes it if that fails.</summary>
    private NbdTestServer Started()
    {
        try
        {
            Restart();
        }
        catch
        {
            Dispose();
            throw;
        }
        return this;
    }

    /// <summary>Starts the server (again) and waits until its socket accepts connections.</summary>
    public void Restart()
    {
        if (_process is not null) throw new InvalidOperationException("the server runs");
        File.Delete(SocketPath);
        var info = ServerKind == Kind.QemuNbd
            ? new ProcessStartInfo("qemu-nbd", ["-f", "raw", "-x", "exp", "--socket", SocketPath, $"--shared={_shared}", "--cache=none",
                "--discard=unmap", .. ReadOnly ? new[] { "--read-only" } : [], FilePath])
            : new ProcessStartInfo("nbdkit", ["--foreground", "--exit-with-parent", "-U", SocketPath, .. ReadOnly ? new[] { "-r" } : [],
                .. ServerKind == Kind.NbdkitMemory ? ["memory", $"size={_size}"] : _nbdkitPlugin]);
        info.RedirectStandardError = true;
        info.RedirectStandardOutput = true;
        try
        {
            _process = Process.Start(info)!;
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new InvalidOperationException($"{info.FileName} cannot run ({e.Message}): the nbd tests need qemu-utils and nbdkit (tests/e2e/install-deps.sh installs them)", e);
        }
        _process.ErrorDataReceived += (_, _) => { };
        _process.OutputDataReceived += (_, _) => { };
        _process.BeginErrorReadLine();
        _process.BeginOutputReadLine();
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (!CanConnect())
        {
            if (_process.HasExited) throw new InvalidOperationException($"{info.FileName} exited with {_process.ExitCode} before serving {SocketPath}");
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"{info.FileName} did not serve {SocketPath} within 20 s");
            Thread.Sleep(20);
        }
    }

    private bool CanConnect()
    {
        if (!File.Exists(SocketPath)) return false;
        using var socket = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, 0);
        try
        {
            socket.Connect(new System.Net.Sockets.UnixDomainSocketEndPoint(SocketPath));
            return true;
        }
        catch (System.Net.Sockets.SocketException)
        {
            return false;
        }
    }

    /// <summary>Kills the server (SIGKILL) and waits until it is gone: its connections drop.</summary>
    public void Stop()
    {
        if (_process is null) return;
        try
        {
            if (!_process.HasExited) _process.Kill();
            _process.WaitForExit(10_000);
        }
        catch (InvalidOperationException) { }
        _process.Dispose();
        _process = null;
    }

    public void Dispose()
    {
        Stop();
        try { Directory.Delete(_dir, recursive: true); }
        catch (IOException) { }
    }
}
