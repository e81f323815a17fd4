using System.Buffers.Binary;
using BlkTarget.Storage;
using BlkTarget.Storage.Image;
using BlkTarget.Storage.RawFile;
using BlkTarget.Vhost.Frontend;
using BlkTarget.Vhost.Scsi;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit.Abstractions;

namespace BlkTarget.IntegrationTests.Scsi;

/// <summary>WRITE SAME with a pattern on every kind of backend (the raw file and the image complete through
/// io_uring, so the range goes out piece after piece from completions), and a STOP given on one request queue
/// seen by the other.</summary>
public sealed class ScsiSpcIntegrationTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateDirectory(Path.Combine("/var/tmp", $"blkt-scsi-spc-{Guid.NewGuid():N}")).FullName;

    private IBlockDevice? Disk(string backend)
    {
        if (backend == "ram") return null;
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

    public void Dispose() => Directory.Delete(_dir, recursive: true);
}
