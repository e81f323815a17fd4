using System.Diagnostics;
using System.Runtime.InteropServices;
using BlkTarget.Storage.Interop;

namespace BlkTarget.Storage.Tests.RawFile;

/// <summary>
/// A loop device (losetup) over a new sparse file, detached and deleted again on dispose, even when the test failed.
/// Needs root and losetup (Debian package mount); without them the test fails, it never skips: a block-device test
/// that silently passed would prove nothing, in CI (CI=true) or anywhere else.
/// </summary>
internal sealed unsafe class LoopDevice : IDisposable
{
    private const ulong LOOP_CTL_ADD = 0x4C80, LOOP_CTL_REMOVE = 0x4C81;
    private const int EEXIST = 17;
    private bool _limitsChanged;

    private LoopDevice(string backingFile, string device)
    {
        BackingFile = backingFile;
        Device = device;
    }

    /// <summary>The sparse file behind the device.</summary>
    public string BackingFile { get; }
    /// <summary>/dev/loopN.</summary>
    public string Device { get; }
    /// <summary>The device's request-queue directory in sysfs (its limits).</summary>
    public string QueueDirectory => $"/sys/block/{Path.GetFileName(Device)}/queue";

    /// <summary>Creates a <paramref name="size"/>-byte sparse file in <paramref name="directory"/> and attaches it.</summary>
    public static LoopDevice Create(string directory, long size)
    {
        string file = Path.Combine(directory, $"blkt-loop-{Guid.NewGuid():N}.img");
        using (var stream = new FileStream(file, FileMode.CreateNew)) stream.SetLength(size);
        try
        {
            return new LoopDevice(file, Run("losetup", "--find", "--show", file).Trim());
        }
        catch
        {
            File.Delete(file);
            throw;
        }
    }

    /// <summary>One queue limit as sysfs shows it (bytes).</summary>
    public ulong Limit(string name) => ulong.Parse(File.ReadAllText(Path.Combine(QueueDirectory, name)).Trim());

    /// <summary>
    /// Lowers a writable queue limit, e.g. discard_max_bytes to 0 to take discard away. Such a limit outlives the
    /// attachment (it belongs to loopN, not to the file) and cannot be set back exactly through sysfs, so dispose then
    /// replaces loopN with a fresh one (LOOP_CTL_REMOVE, LOOP_CTL_ADD): nobody's next loop device inherits it.
    /// </summary>
    public void SetLimit(string name, ulong value)
    {
        _limitsChanged = true;
        File.WriteAllText(Path.Combine(QueueDirectory, name), value.ToString());
    }

    /// <summary>Runs a command to completion; its stdout, or an exception with its stderr when it fails or is missing.</summary>
    public static string Run(string command, params string[] arguments)
    {
        var start = new ProcessStartInfo(command) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string argument in arguments) start.ArgumentList.Add(argument);
        Process process;
        try
        {
            process = Process.Start(start) ?? throw new InvalidOperationException($"{command} did not start");
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new InvalidOperationException($"{command} is required for block-device tests (as root; Debian: apt-get install mount util-linux): {e.Message}", e);
        }
        using (process)
        {
            string output = process.StandardOutput.ReadToEnd();
            string error = process.StandardError.ReadToEnd();
            process.WaitForExit();
            if (process.ExitCode != 0)
                throw new InvalidOperationException($"{command} {string.Join(' ', arguments)} failed ({process.ExitCode}): {error.Trim()} (block-device tests need root)");
            return output;
        }
    }

    public void Dispose()
    {
        try
        {
            Run("losetup", "-d", Device);
            if (_limitsChanged) Recreate();
        }
        finally
        {
            File.Delete(BackingFile);
        }
    }

    /// <summary>Removes the detached loopN and adds it again with default limits.</summary>
    private void Recreate()
    {
        nint number = nint.Parse(Device["/dev/loop".Length..]);
        using var control = new OwnedFd(FileNative.open("/dev/loop-control", FileNative.O_RDWR | FileNative.O_CLOEXEC, 0));
        if (control.IsInvalid) throw new IOException($"cannot open /dev/loop-control: {FileNative.LastError()}");
        // The detach completes when the last opener has gone; until then removal is refused (EBUSY).
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (FileNative.ioctl(control.Fd, LOOP_CTL_REMOVE, (void*)number) < 0)
        {
            if (DateTime.UtcNow > deadline) throw new IOException($"cannot remove {Device} to reset its limits: {FileNative.LastError()}");
            Thread.Sleep(20);
        }
        // EEXIST: someone's losetup --find created it again in between, just as fresh.
        if (FileNative.ioctl(control.Fd, LOOP_CTL_ADD, (void*)number) < 0 && Marshal.GetLastPInvokeError() != EEXIST)
            throw new IOException($"cannot add {Device} back: {FileNative.LastError()}");
    }
}
