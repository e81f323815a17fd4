using BlkTarget.Storage;
using BlkTarget.Storage.Ram;
using BlkTarget.Vhost.Blk;
using BlkTarget.Vhost.Protocol;
using BlkTarget.Vhost.Reactor;
using Xunit.Abstractions;

namespace BlkTarget.IntegrationTests;

/// <summary>How the in-process target under test is configured.</summary>
internal sealed record TargetSpec
{
    public ulong SizeBytes { get; init; } = 16 << 20;
    public uint BlockSize { get; init; } = 512;
    public bool ReadOnly { get; init; }
    public int Queues { get; init; } = 2;
    public int Reactors { get; init; } = 2;
    public string Serial { get; init; } = "blkt-integration";
    /// <summary>The backend; null: a RAM disk of <see cref="SizeBytes"/>. The target disposes it.</summary>
    public Func<IBlockDevice>? Backend { get; init; }
    public VhostUserSessionOptions Session { get; init; } = new();
}

/// <summary>
/// The real target, in process: reactors, a RAM disk (or the spec's backend), the virtio-blk device and the
/// vhost-user server listening on a fresh Unix socket under /tmp.
/// </summary>
internal sealed class TestTarget : IDisposable
{
    public TestTarget(ITestOutputHelper? output, TargetSpec? spec = null)
    {
        Spec = spec ?? new TargetSpec();
        Log = new TestLogger(output);
        SocketPath = $"/tmp/blkt-it-{Guid.NewGuid():N}.sock";
        Reactors = new ReactorPool(null, Spec.Reactors, TimeSpan.FromMicroseconds(50), Log);
        Disk = Spec.Backend?.Invoke() ?? new RamDisk(Spec.SizeBytes, Spec.BlockSize, Spec.ReadOnly);
        Device = new VirtioBlkDevice("it0", Disk, new BlkOptions { Queues = Spec.Queues, Serial = Spec.Serial }, Log);
        Server = VhostUserServer.Start(SocketPath, Device, Reactors, 0, Log, Spec.Session);
    }

    public TargetSpec Spec { get; }
    public TestLogger Log { get; }
    public string SocketPath { get; }
    public ReactorPool Reactors { get; }
    public IBlockDevice Disk { get; }
    public VirtioBlkDevice Device { get; }
    public VhostUserServer Server { get; }

    /// <summary>Waits until the server has no frontend (the last one's session ended).</summary>
    public bool WaitForNoFrontend(TimeSpan timeout)
    {
        long deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        while (Server.HasFrontend)
        {
            if (Environment.TickCount64 > deadline) return false;
            Thread.Sleep(5);
        }
        return true;
    }

    public void Dispose()
    {
        Server.Dispose();
        Reactors.Dispose();
        Disk.Dispose();
    }
}
