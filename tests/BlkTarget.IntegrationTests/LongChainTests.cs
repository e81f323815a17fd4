using System.Buffers.Binary;
using BlkTarget.IntegrationTests.Scsi;
using BlkTarget.Storage;
using BlkTarget.Storage.Image;
using BlkTarget.Storage.RawFile;
using BlkTarget.Vhost.Frontend;
using BlkTarget.Vhost.Scsi;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit.Abstractions;
using static BlkTarget.IntegrationTests.TestData;

namespace BlkTarget.IntegrationTests;

/// <summary>
/// Every chain the virtio specification allows is served (virtio 1.2 2.7.5.3.1: up to the queue size), however far
/// beyond seg_max: Windows' viostor and vioscsi send requests of about 515 segments on a 1024-entry queue. Queue of
/// 1024, indirect tables of 255, 515 (alternating 100 and 924 bytes) and 1021 data segments, written and read back
/// on the RAM, raw file (O_DIRECT) and image backends; virtio-scsi READ(10)/WRITE(10) of 255 and 513 segments.
/// </summary>
public sealed class LongChainTests(ITestOutputHelper output) : IDisposable
{
    private const ulong DiskBytes = 16 << 20;
    private readonly string _dir = Directory.CreateDirectory(Path.Combine("/var/tmp", $"blkt-chains-{Guid.NewGuid():N}")).FullName;

    private TestTarget Target(string backend) => new(output, new TargetSpec
    {
        SizeBytes = DiskBytes,
        Queues = 1,
        Reactors = 1,
        Backend = backend == "ram" ? null : () => Disk(backend, DiskBytes),
    });

    /// <summary>A raw file (O_DIRECT) or a fresh image of <paramref name="size"/> bytes in the test's folder.</summary>
    private IBlockDevice Disk(string backend, ulong size)
    {
        if (backend == "file")
            return FileDisk.Open(new FileDiskOptions { Path = Path.Combine(_dir, "disk.img"), CreateSize = size, DirectIo = true }, NullLogger.Instance);
        string path = Path.Combine(_dir, "disk.bti");
        ImageFile.Create(path, size, 65536);
        return ImageDisk.Open(path, readOnly: false, 512, directIo: true, NullLogger.Instance);
    }

    private static TestGuest Connect(string socket, int queues = 1) =>
        TestGuest.Connect(socket, queues: queues, queueSize: 1024, maxIndirect: 1024, arenaBytes: (ulong)queues * (16 << 20) + (24 << 20));

    /// <summary>The segment lengths of one request: 255 or 1021 of 512 bytes, or 515 alternating 100 and 924 bytes
    /// (and one of 512 to end on a sector: 257.5 KiB).</summary>
    private static uint[] Shape(int segments) => segments == 515
        ? [.. Enumerable.Range(0, 514).Select(i => i % 2 == 0 ? 100u : 924u), 512u]
        : [.. Enumerable.Repeat(512u, segments)];

    private static GuestBuffer[] Pieces(TestGuest guest, uint[] shape) =>
        [.. shape.Select(length => guest.Allocate(length, alignment: 4))];

    [Theory]
    [InlineData("ram", 255)]
    [InlineData("ram", 515)]
    [InlineData("ram", 1021)]
    [InlineData("file", 255)]
    [InlineData("file", 515)]
    [InlineData("file", 1021)]
    [InlineData("image", 255)]
    [InlineData("image", 515)]
    [InlineData("image", 1021)]
    public void Blk_requests_with_hundreds_of_segments_round_trip(string backend, int segments)
    {
        using var target = Target(backend);
        using var guest = Connect(target.SocketPath);
        var blk = guest.Blk[0];
        var shape = Shape(segments);
        var written = Pieces(guest, shape);
        var random = new Random(segments);
        foreach (var piece in written) random.NextBytes(piece.Span);
        Assert.Equal(Ok, blk.Execute(BlkRequestType.Out, 8, written, indirect: true).Status);
        var read = Pieces(guest, shape);
        foreach (var piece in read) piece.Span.Fill(0xEE);
        var completion = blk.Execute(BlkRequestType.In, 8, read, indirect: true);
        Assert.Equal(Ok, completion.Status);
        Assert.Equal((uint)shape.Sum(l => l) + 1, completion.UsedLength);
        for (int i = 0; i < shape.Length; i++) Assert.True(written[i].Span.SequenceEqual(read[i].Span), $"segment {i} differs");
        // The queue still works for ordinary requests.
        var plain = guest.Allocate(512);
        Assert.Equal(Ok, blk.Execute(BlkRequestType.In, 8, [plain]).Status);
        Assert.True(plain.Span.SequenceEqual(read.SelectMany(p => p.Span.ToArray()).Take(512).ToArray()));
    }

    [Fact]
    public void Get_id_writes_the_whole_nul_padded_field_over_whatever_the_driver_left_there()
    {
        using var target = new TestTarget(output, new TargetSpec { Serial = "abc" });
        using var guest = TestGuest.Connect(target.SocketPath);
        var id = guest.Allocate(20);
        id.Span.Fill(0xFF);
        var completion = guest.Blk[0].Execute(BlkRequestType.GetId, 0, [id]);
        Assert.Equal(Ok, completion.Status);
        Assert.Equal("abc\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"u8.ToArray(), id.Span.ToArray());
        Assert.Equal(21u, completion.UsedLength);
    }

    [Theory]
    [InlineData("ram", 255)]
    [InlineData("ram", 513)]
    [InlineData("file", 513)]
    [InlineData("image", 255)]
    [InlineData("image", 513)]
    public void Scsi_reads_and_writes_with_hundreds_of_segments_round_trip(string backend, int segments)
    {
        using var target = new ScsiTestTarget(output, backend == "ram" ? null : Disk(backend, ScsiTestTarget.Lun0Bytes));
        using var guest = TestGuest.Connect(target.SocketPath, queues: 4, queueSize: 1024, maxIndirect: 1024, arenaBytes: 4 * (16 << 20) + (24 << 20),
            options: new VhostUserFrontendOptions { ConfigSize = ScsiConfigSpace.Size });
        var q = new ScsiCommandQueue(guest.Queues[2], guest.Arena);
        var written = Pieces(guest, Shape(segments));
        var random = new Random(segments);
        foreach (var piece in written) random.NextBytes(piece.Span);
        var write = q.Execute(0, 0, Rw10(0x2A, 64, (ushort)segments), dataOut: written, indirect: true);
        Assert.True(write.IsGood, $"WRITE(10): response {write.Response}, status {write.Status}, sense {write.SenseCode}");
        var read = Pieces(guest, Shape(segments));
        var readBack = q.Execute(0, 0, Rw10(0x28, 64, (ushort)segments), dataIn: read, indirect: true);
        Assert.True(readBack.IsGood, $"READ(10): response {readBack.Response}, status {readBack.Status}, sense {readBack.SenseCode}");
        Assert.Equal(0u, readBack.Resid);
        for (int i = 0; i < segments; i++) Assert.True(written[i].Span.SequenceEqual(read[i].Span), $"segment {i} differs");
        // The queue still serves ordinary commands afterwards.
        Assert.True(q.Execute(0, 0, [0x00, 0, 0, 0, 0, 0]).IsGood);
    }


    public void Dispose() => Directory.Delete(_dir, recursive: true);
}
