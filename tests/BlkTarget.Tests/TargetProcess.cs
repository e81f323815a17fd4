using System.Diagnostics;
using System.Runtime.InteropServices;

namespace BlkTarget.Tests;

/// <summary>Runs the real `blktarget` executable (built next to the tests) as a child process.</summary>
internal sealed partial class TargetProcess : IDisposable
{
    [LibraryImport("libc", SetLastError = true)]
    private static partial int kill(int pid, int signal);

    public const int SIGINT = 2;
    public const int SIGTERM = 15;
    public const int SIGKILL = 9;
    public const int SIGHUP = 1;

    private readonly Process _process;
    private readonly System.Text.StringBuilder _stdout = new();
    private readonly System.Text.StringBuilder _stderr = new();

    private TargetProcess(Process process)
    {
        _process = process;
        process.OutputDataReceived += (_, e) => { lock (_stdout) if (e.Data is not null) _stdout.AppendLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { lock (_stderr) if (e.Data is not null) _stderr.AppendLine(e.Data); };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
    }

    public static TargetProcess Start(params string[] args) => Start(new Dictionary<string, string>(), args);

    /// <summary>Starts the target with extra environment variables (e.g. NOTIFY_SOCKET).</summary>
    public static TargetProcess Start(IReadOnlyDictionary<string, string> environment, params string[] args)
    {
        // Through env(1) with every signal at its default disposition: a test run started as a background job
        // (`cmd &` ignores SIGINT and SIGQUIT) or under nohup (SIGHUP too) passes the ignored signals on, and .NET
        // then leaves them ignored, so the SIGINT stop and the SIGHUP reload the tests check would never arrive.
        var info = new ProcessStartInfo("/usr/bin/env") { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
        foreach (var (name, value) in environment) info.Environment[name] = value;
        info.ArgumentList.Add("--default-signal");
        info.ArgumentList.Add("dotnet");
        info.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "blktarget.dll"));
        foreach (var a in args) info.ArgumentList.Add(a);
        return new TargetProcess(Process.Start(info)!);
    }

    public string Stdout { get { lock (_stdout) return _stdout.ToString(); } }
    public string Stderr { get { lock (_stderr) return _stderr.ToString(); } }
    public int Pid => _process.Id;

    public int WaitForExit(TimeSpan timeout)
    {
        if (!_process.WaitForExit(timeout)) throw new TimeoutException($"blktarget did not exit; stdout: {Stdout} stderr: {Stderr}");
        _process.WaitForExit();
        return _process.ExitCode;
    }

    public void Signal(int signal) => kill(_process.Id, signal);

    /// <summary>Waits until the socket file exists (the target is listening).</summary>
    public void WaitForSocket(string path, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (!File.Exists(path))
        {
            if (_process.HasExited) throw new InvalidOperationException($"blktarget exited with {_process.ExitCode}: {Stderr}{Stdout}");
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"no socket at {path}: {Stderr}{Stdout}");
            Thread.Sleep(20);
        }
    }

    /// <summary>Waits until the target's log contains <paramref name="text"/>.</summary>
    /// <summary>Waits until stdout (or, with <paramref name="stderr"/>, stderr: where warnings and errors go) shows
    /// <paramref name="text"/>.</summary>
    public void WaitForOutput(string text, TimeSpan timeout, bool stderr = false)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (!(stderr ? Stderr : Stdout).Contains(text))
        {
            if (_process.HasExited) throw new InvalidOperationException($"blktarget exited with {_process.ExitCode}: {Stderr}{Stdout}");
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"no '{text}' in output: {Stderr}{Stdout}");
            Thread.Sleep(20);
        }
    }

    public void Dispose()
    {
        if (!_process.HasExited) _process.Kill();
        _process.Dispose();
    }
}
