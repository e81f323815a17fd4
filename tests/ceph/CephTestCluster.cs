using System.Diagnostics;

namespace BlkTarget.Tests.Ceph;

/// <summary>
/// The throwaway Ceph cluster tests run against: one monitor and one OSD on 127.0.0.1 (bluestore on a sparse file, so
/// that an OSD killed by a fault test comes back with its data), started once per test process with
/// tests/ceph/start-cluster.sh under /var/tmp and stopped (exactly its daemons) when the process exits.
/// With BLKTARGET_CEPH_CONF set, that cluster's ceph.conf is used instead and nothing is started. A machine without the
/// Ceph packages fails the tests that need it (tests/e2e/install-deps.sh installs them): they never skip.
/// </summary>
public static class CephTestCluster
{
    private static readonly Lazy<string> Conf = new(Start, LazyThreadSafetyMode.ExecutionAndPublication);
    private static string? _dir;
    private static int _images;

    /// <summary>The cluster's ceph.conf (starting the cluster on first use).</summary>
    public static string ConfPath => Conf.Value;

    /// <summary>Where the cluster lives when this process started it (null with BLKTARGET_CEPH_CONF).</summary>
    public static string? Directory => _dir;

    /// <summary>Creates a fresh image in pool rbd (<paramref name="sizeMiB"/> MiB) and returns its name.</summary>
    public static string CreateImage(int sizeMiB = 256, string prefix = "t")
    {
        string name = $"{prefix}{Environment.ProcessId}-{Interlocked.Increment(ref _images)}";
        Rbd($"create --size {sizeMiB}M rbd/{name}");
        return name;
    }

    /// <summary>Runs the rbd tool against the cluster (e.g. "resize --size 512M rbd/x"); throws with its output on failure.</summary>
    public static string Rbd(string arguments) => Run("rbd", arguments, TimeSpan.FromSeconds(60));

    /// <summary>Kills the OSD (kill -9 of its recorded PID): I/O to the cluster stops.</summary>
    public static void StopOsd() => Run(Script("stop-cluster.sh"), $"--osd {RequireOwnDirectory()}", TimeSpan.FromSeconds(30));

    /// <summary>Starts the OSD again and waits until the monitor reports it up.</summary>
    public static void StartOsd() => Run(Script("start-cluster.sh"), $"--osd {RequireOwnDirectory()}", TimeSpan.FromSeconds(60));

    private static string RequireOwnDirectory() =>
        _dir ?? throw new InvalidOperationException("the OSD can only be stopped in a cluster this test process started");

    private static string Start()
    {
        if (Environment.GetEnvironmentVariable("BLKTARGET_CEPH_CONF") is { Length: > 0 } given) return given;
        _dir = Path.Combine("/var/tmp", $"blkt-ceph-{Environment.ProcessId}-{Guid.NewGuid():N}"[..32]);
        AppDomain.CurrentDomain.ProcessExit += (_, _) => Stop();
        try
        {
            Run(Script("start-cluster.sh"), $"--bluestore {_dir}", TimeSpan.FromSeconds(120));
        }
        catch
        {
            Stop();
            throw;
        }
        return Path.Combine(_dir, "ceph.conf");
    }

    private static void Stop()
    {
        if (_dir is null) return;
        try { Run(Script("stop-cluster.sh"), $"--remove {_dir}", TimeSpan.FromSeconds(30)); }
        catch (Exception) { }
    }

    private static string Script(string name)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, "tests", "ceph", name);
            if (File.Exists(candidate)) return candidate;
        }
        throw new FileNotFoundException($"tests/ceph/{name} not found above {AppContext.BaseDirectory}");
    }

    private static string Run(string file, string arguments, TimeSpan timeout)
    {
        var info = new ProcessStartInfo(file, arguments) { RedirectStandardOutput = true, RedirectStandardError = true };
        if (file == "rbd") info.Environment["CEPH_CONF"] = ConfPath;
        Process process;
        try
        {
            process = Process.Start(info)!;
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new InvalidOperationException($"{file} cannot run ({e.Message}): the Ceph tests need ceph-mon, ceph-osd and ceph-common (tests/e2e/install-deps.sh installs them)", e);
        }
        using (process)
        {
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEndAsync();
            if (!process.WaitForExit(timeout))
            {
                process.Kill(entireProcessTree: true);
                throw new TimeoutException($"{file} {arguments} did not finish in {timeout.TotalSeconds} s");
            }
            process.WaitForExit();
            if (process.ExitCode != 0)
                throw new InvalidOperationException($"{file} {arguments} failed ({process.ExitCode}): {stderr.Result}{stdout.Result}");
            return stdout.Result;
        }
    }
}
