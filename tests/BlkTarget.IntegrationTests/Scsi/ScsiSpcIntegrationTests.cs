using System.Buffers.Binary;
using BlkTarget.Storage;
using BlkTarget.Storage.Image;
using BlkTarget.Storage.Nbd;
using BlkTarget.Storage.RawFile;
using BlkTarget.Vhost.Frontend;
using BlkTarget.Vhost.Scsi;
using BlkTarget.Tests.Nbd;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit.Abstractions;

namespace BlkTarget.IntegrationTests.Scsi;

/// <summary>WRITE SAME with a pattern on every kind of backend (the raw file and the image complete through
/// io_uring, so the range goes out piece after piece from completions), and a STOP given on one request queue
/// seen by the other.</summary>
public sealed class ScsiSpcIntegrationTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateDirectory(Path.Combine("/var/tmp", $"blkt-scsi-spc-{Guid.NewGuid():N}")).FullName;

    private readonly List<NbdTestServer> _nbdServers = [];

    private IBlockDevice? Disk(string backend)
    {
        if (backend == "ram") return null;
        if (backend == "nbd")
        {
            var server = NbdTestServer.Start(NbdTestServer.Kind.QemuNbd, ScsiTestTarget.Lun0Bytes, shared: 1);
            _nbdServers.Add(server);
            return NbdDisk.Open(new NbdDiskOptions { Uri = server.Uri }, NullLogger.Instance);
        }
        if (backend == "file")
            return FileDisk.Open(new FileDiskOptions { Path = Path.Combine(_dir, "disk.img"), CreateSize = ScsiTestTarget.Lun0Bytes, DirectIo = true }, NullLogger.Instance);
        string path = Path.Combine(_dir, "disk.bti");
        ImageFile.Create(path, ScsiTestTarget.Lun0Bytes, 65536);
        return ImageDisk.Open(path, readOnly: false, 512, directIo: true, NullLogger.Instance);
    }

    private static TestGuest Connect(ScsiTestTarget target) =>
        TestGuest.Connect(target.SocketPath, queues: 4, arenaBytes: 24 << 20, options: new VhostUserFrontendOptions { ConfigSize = ScsiConfigSpace.Size });

    private static byte[] Cdb16(byte opcode, ulong lba, uint blocks, byte flags = 0)
    {
        var c = new byte[16];
        c[0] = opcode;
        c[1] = flags;
        BinaryPrimitives.WriteUInt64BigEndian(c.AsSpan(2), lba);
        BinaryPrimitives.WriteUInt32BigEndian(c.AsSpan(10), blocks);
        return c;
    }

    [Theory]
    [InlineData("ram")]
    [InlineData("file")]
    [InlineData("image")]
    [InlineData("nbd")]
    public void Write_same_with_a_pattern_fills_a_range_of_several_pieces(string backend)
    {
        using var target = new ScsiTestTarget(output, Disk(backend));
        using var guest = Connect(target);
        var q = new ScsiCommandQueue(guest.Queues[2], guest.Arena);
        var block = guest.Allocate(512);
        for (int i = 0; i < 512; i++) block.Span[i] = (byte)(i % 251 + 1);
        // 5000 blocks from LBA 7: 2.4 MiB, three pieces.
        var ws = q.Execute(0, 0, Cdb16(ScsiOp.WriteSame16, 7, 5000, flags: 0x08), dataOut: [block]);
        Assert.True(ws.IsGood, $"WRITE SAME(16): response {ws.Response}, status {ws.Status}, sense {ws.SenseCode}");
        for (ulong lba = 0; lba < 5016; lba += 1024)
        {
            uint blocks = (uint)Math.Min(1024, 5016 - lba);
            var back = guest.Allocate(blocks * 512);
            Assert.True(q.Execute(0, 0, Cdb16(ScsiOp.Read16, lba, blocks), dataIn: [back]).IsGood);
            for (uint i = 0; i < blocks; i++)
            {
                ulong at = lba + i;
                var expected = at is >= 7 and < 5007 ? block.Span : new byte[512];
                Assert.True(back.Span.Slice((int)i * 512, 512).SequenceEqual(expected), $"LBA {at}");
            }
        }
    }

    [Fact]
    public void A_stop_on_one_request_queue_holds_media_access_on_the_other_until_a_start()
    {
        using var target = new ScsiTestTarget(output);
        using var guest = Connect(target);
        var q2 = new ScsiCommandQueue(guest.Queues[2], guest.Arena);
        var q3 = new ScsiCommandQueue(guest.Queues[3], guest.Arena);
        byte[] testUnitReady = [0x00, 0, 0, 0, 0, 0];
        Assert.True(q2.Execute(0, 0, [ScsiOp.StartStopUnit, 0, 0, 0, 0x00, 0]).IsGood);
        var tur = q3.Execute(0, 0, testUnitReady);
        Assert.Equal(ScsiStatus.CheckCondition, tur.Status);
        Assert.Equal(new SenseCode(0x02, 0x04, 0x02), tur.SenseCode);
        Assert.True(q3.Execute(0, 1, testUnitReady).IsGood);                  // per LUN: LUN 1 still runs
        Assert.True(q3.Execute(0, 0, [ScsiOp.StartStopUnit, 0, 0, 0, 0x01, 0]).IsGood);
        Assert.True(q2.Execute(0, 0, testUnitReady).IsGood);
    }

    /// <summary>Thin provisioning (READ CAPACITY(16) LBPME) is reported on an nbd LUN exactly when the server can TRIM.</summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void An_nbd_lun_reports_thin_provisioning_only_when_the_server_can_trim(bool canTrim)
    {
        var server = canTrim
            ? NbdTestServer.Start(NbdTestServer.Kind.QemuNbd, ScsiTestTarget.Lun0Bytes, shared: 1)
            : NbdTestServer.StartNbdkit(ScsiTestTarget.Lun0Bytes, file => ["--filter=nozero", "eval", "zeromode=none", $"get_size=echo {ScsiTestTarget.Lun0Bytes}",
                $"pread=dd if={file} skip=$4 count=$3 iflag=skip_bytes,count_bytes status=none",
                $"pwrite=dd of={file} seek=$4 conv=notrunc oflag=seek_bytes status=none",
                "can_write=exit 0", "can_flush=exit 3", "can_trim=exit 3", "can_zero=exit 3"]);
        _nbdServers.Add(server);
        using var target = new ScsiTestTarget(output, NbdDisk.Open(new NbdDiskOptions { Uri = server.Uri }, NullLogger.Instance));
        using var guest = Connect(target);
        var q = new ScsiCommandQueue(guest.Queues[2], guest.Arena);
        var capacity = guest.Allocate(32);
        var rc16 = new byte[16];
        rc16[0] = ScsiOp.ServiceActionIn16;
        rc16[1] = ScsiOp.SaReadCapacity16;
        rc16[13] = 32;
        Assert.True(q.Execute(0, 0, rc16, dataIn: [capacity]).IsGood);
        Assert.Equal(ScsiTestTarget.Lun0Bytes / 512 - 1, BinaryPrimitives.ReadUInt64BigEndian(capacity.Span));
        Assert.Equal(canTrim, (capacity.Span[14] & 0x80) != 0);
        var unmapParameters = new byte[24];
        BinaryPrimitives.WriteUInt16BigEndian(unmapParameters, 22);
        BinaryPrimitives.WriteUInt16BigEndian(unmapParameters.AsSpan(2), 16);
        BinaryPrimitives.WriteUInt64BigEndian(unmapParameters.AsSpan(8), 64);
        BinaryPrimitives.WriteUInt32BigEndian(unmapParameters.AsSpan(16), 8);
        var parameters = guest.Allocate(24);
        unmapParameters.CopyTo(parameters.Span);
        var unmap = q.Execute(0, 0, [ScsiOp.Unmap, 0, 0, 0, 0, 0, 0, 0, 24, 0], dataOut: [parameters]);
        Assert.Equal(canTrim, unmap.IsGood);      // without provisioning UNMAP is an illegal request
    }

    public void Dispose()
    {
        foreach (var server in _nbdServers) server.Dispose();
        Directory.Delete(_dir, recursive: true);
    }
}
