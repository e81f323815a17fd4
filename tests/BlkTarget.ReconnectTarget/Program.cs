using BlkTarget.Storage;
using BlkTarget.Storage.Faults;
using BlkTarget.Storage.RawFile;
using BlkTarget.Vhost.Blk;
using BlkTarget.Vhost.Protocol;
using BlkTarget.Vhost.Reactor;
using Microsoft.Extensions.Logging.Abstractions;

// Usage: BlkTarget.ReconnectTarget SOCKET FILE QUEUES HOLD_FROM
// Serves FILE (page cache, so a SIGKILL loses nothing that was written) as vhost-user-blk on SOCKET with QUEUES queues
// on one reactor. Writes that reach byte HOLD_FROM or beyond are held: accepted and never completed, so they are in
// flight when the test kills this process (-1: nothing is held). Prints "ready" once it listens, then serves until
// killed.
if (args.Length != 4) return 2;
string socket = args[0], file = args[1];
int queues = int.Parse(args[2]);
long holdFrom = long.Parse(args[3]);

var log = NullLogger.Instance;
IBlockDevice disk = FileDisk.Open(new FileDiskOptions { Path = file, DirectIo = false }, log);
if (holdFrom >= 0)
    disk = new FaultInjectingDisk(disk, [new FaultRule(BlockStatus.Ok) { Hold = true, Operation = BlockOperation.Write, RangeStart = (ulong)holdFrom }]);
using var reactors = new ReactorPool(null, 1, TimeSpan.FromMicroseconds(50), log);
var device = new VirtioBlkDevice("reconnect", disk, new BlkOptions { Queues = queues }, log);
using var server = VhostUserServer.Start(socket, device, reactors, 0, log);
Console.WriteLine("ready");
Thread.Sleep(Timeout.Infinite);
return 0;
