using BlkTarget.Storage.Ram;
using BlkTarget.Vhost.Blk;
using BlkTarget.Vhost.Protocol;
using BlkTarget.Vhost.Reactor;
using Microsoft.Extensions.Logging;

namespace BlkTarget.IntegrationTests;

/// <summary>A one-queue vhost-user-blk export of a fresh RAM disk on a given reactor pool, on a private socket: for
/// tests that need the pool itself (its reactors' statistics, what ran on it before).</summary>
internal sealed class RamBlkExport : IDisposable
{
    private readonly RamDisk _disk;
    private readonly VhostUserServer _server;

    public RamBlkExport(ReactorPool reactors, ILogger log, ulong sizeBytes = 4 << 20)
    {
        _disk = new RamDisk(sizeBytes);
        Socket = $"/tmp/blkt-ram-{Guid.NewGuid():N}.sock";
        _server = VhostUserServer.Start(Socket, new VirtioBlkDevice("ram", _disk, new BlkOptions(), log), reactors, 0, log);
    }

    public string Socket { get; }

    public void Dispose()
    {
        _server.Dispose();
        _disk.Dispose();
    }
}
