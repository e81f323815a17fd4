using System.Buffers.Binary;
using BlkTarget.Storage.Compression;
using BlkTarget.Storage.Image;
using ZstdSharp;
using ZstdSharp.Unsafe;

namespace BlkTarget.Storage.Tests.Image;

/// <summary>export/import: a round trip restores contents and allocation; anything but an intact stream is refused
/// with a clear error and leaves no image behind.</summary>
public sealed class ExportImportTests : IDisposable
{
    private const uint Cluster = 64 << 10;
    private const ulong Size = 24 << 20;
    private readonly ImageTestFiles _files = new();

    private string SampleImage(string name = "src.bti", uint cluster = Cluster) => _files.Image(name, Size, cluster,
        (0, ImageTestFiles.Pattern(4096, 1)),
        (2 * Cluster, ImageTestFiles.Pattern(3 * (int)Cluster, 2)),
        (10 * Cluster, new byte[Cluster]),                                  // written zeros: no record
        (200 * Cluster, Enumerable.Repeat((byte)0xAB, 2 * (int)Cluster).ToArray()),
        (Size - 4096, ImageTestFiles.Pattern(4096, 3)));

    private string Exported(string image, string name = "src.zst")
    {
        string stream = _files.PathFor(name);
        ExportStream.Export(image, stream);
        return stream;
    }

    private static byte[] Decompress(byte[] compressed)
    {
        using var zstd = new DecompressionStream(new MemoryStream(compressed), checkEndOfStream: true);
        var output = new MemoryStream();
        zstd.CopyTo(output);
        return output.ToArray();
    }

    private static byte[] Compress(byte[] plain)
    {
        var output = new MemoryStream();
        using (var zstd = new CompressionStream(output, leaveOpen: true))
        {
            zstd.SetParameter(ZSTD_cParameter.ZSTD_c_checksumFlag, 1);
            zstd.Write(plain);
        }
        return output.ToArray();
    }

    private void AssertImportFails(byte[] stream, string expected)
    {
        string input = _files.PathFor($"bad-{Guid.NewGuid():N}.zst"), image = _files.PathFor($"bad-{Guid.NewGuid():N}.bti");
        File.WriteAllBytes(input, stream);
        var error = Assert.ThrowsAny<IOException>(() => ExportStream.Import(input, image));
        Assert.Contains(expected, error.Message);
        Assert.DoesNotContain("\n", error.Message);
        Assert.False(File.Exists(image), "a failed import left its image behind");
    }

    [Fact]
    public void A_round_trip_restores_contents_and_allocation()
    {
        string source = SampleImage();
        string stream = Exported(source);
        var exported = ExportStream.Export(source, new MemoryStream());
        Assert.Equal(4UL, exported.Records);                                 // clusters 0 | 2-4 | 200-201 | the last one
        string restored = _files.PathFor("restored.bti");
        var imported = ExportStream.Import(stream, restored);
        Assert.Equal(ImageTestFiles.Contents(source), ImageTestFiles.Contents(restored));
        using (var a = ImageFile.Open(source, readOnly: true, directIo: false))
        using (var b = ImageFile.Open(restored, readOnly: true, directIo: false))
        {
            Assert.Equal(a.AllocatedClusters, b.AllocatedClusters);
            Assert.Equal(a.Header.ClusterSize, b.Header.ClusterSize);
            for (ulong v = 0; v < a.Header.MapEntries; v++) Assert.Equal(a.Entry(v) != 0, b.Entry(v) != 0);
        }
        Assert.Equal(7UL, imported.AllocatedClusters);
        Assert.Empty(ImageChecker.Check(restored).Problems);
        Assert.True(new FileInfo(stream).Length < 6 * Cluster, $"stream is {new FileInfo(stream).Length} bytes");
    }

    /// <summary>The decompressed stream of an empty 1 MiB image with 4 KiB clusters, as docs/image-format.md lays it out.</summary>
    private static readonly byte[] EmptyHeader =
    [
        // magic "BLKTEXP\0", version 1, header size 64
        0x42, 0x4C, 0x4B, 0x54, 0x45, 0x58, 0x50, 0x00, 0x01, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00,
        // virtual size 1 MiB, cluster size 4096, flags 0
        0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        // reserved
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        // reserved, header CRC-32C 0x6183F1E5
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xE5, 0xF1, 0x83, 0x61,
    ];

    /// <summary>The same image with one 4 KiB cluster of 0xAB at virtual offset 8192: header, one DATA record
    /// (its 4096 bytes of 0xAB go between <see cref="OneClusterRecord"/> and <see cref="OneClusterEnd"/>), END.</summary>
    private static readonly byte[] OneClusterRecord =
    [
        // "DATA", reserved, virtual offset 8192, length 4096
        0x44, 0x41, 0x54, 0x41, 0x00, 0x00, 0x00, 0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];

    private static readonly byte[] OneClusterEnd =
    [
        // "END\0", reserved, 1 record, 4096 data bytes, CRC-32C of everything before: 0x8B1A255C
        0x45, 0x4E, 0x44, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x5C, 0x25, 0x1A, 0x8B,
    ];

    private static byte[] OneClusterStream() =>
        [.. EmptyHeader, .. OneClusterRecord, .. Enumerable.Repeat((byte)0xAB, 4096), .. OneClusterEnd];

    [Fact]
    public void An_image_with_one_cluster_exports_exactly_the_documented_bytes()
    {
        string image = _files.Image("one.bti", 1 << 20, 4096, (8192, Enumerable.Repeat((byte)0xAB, 4096).ToArray()));

        var plain = Decompress(File.ReadAllBytes(Exported(image, "one.zst")));

        Assert.Equal(OneClusterStream(), plain);
    }

    [Fact]
    public void An_empty_image_exports_a_header_and_an_end_record_only()
    {
        string image = _files.PathFor("empty-golden.bti");
        ImageFile.Create(image, 1 << 20, 4096);

        var plain = Decompress(File.ReadAllBytes(Exported(image, "empty-golden.zst")));

        byte[] end =
        [
            // "END\0", reserved, 0 records, 0 bytes, CRC-32C 0x0B3D67CA
            0x45, 0x4E, 0x44, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xCA, 0x67, 0x3D, 0x0B,
        ];
        Assert.Equal([.. EmptyHeader, .. end], plain);
    }

    [Fact]
    public void A_stream_written_out_by_hand_imports()
    {
        string input = _files.PathFor("by-hand.zst"), image = _files.PathFor("by-hand.bti");
        File.WriteAllBytes(input, Compress(OneClusterStream()));

        var summary = ExportStream.Import(input, image);

        Assert.Equal(1UL << 20, summary.VirtualSize);
        Assert.Equal(4096u, summary.ClusterSize);
        Assert.Equal(1UL, summary.AllocatedClusters);
        var expected = new byte[1 << 20];
        expected.AsSpan(8192, 4096).Fill(0xAB);
        Assert.Equal(expected, ImageTestFiles.Contents(image));
    }

    [Fact]
    public void The_stream_is_plain_zstd_holding_header_records_and_an_end_record()
    {
        string source = SampleImage();
        var plain = Decompress(File.ReadAllBytes(Exported(source)));
        Assert.True(plain.AsSpan(0, 8).SequenceEqual("BLKTEXP\0"u8));
        Assert.Equal(Size, BinaryPrimitives.ReadUInt64LittleEndian(plain.AsSpan(16)));
        Assert.Equal(Cluster, BinaryPrimitives.ReadUInt32LittleEndian(plain.AsSpan(24)));
        int pos = 64;                                                   // header length
        var extents = new List<(ulong, ulong)>();
        while (plain.AsSpan(pos, 4).SequenceEqual("DATA"u8))
        {
            ulong offset = BinaryPrimitives.ReadUInt64LittleEndian(plain.AsSpan(pos + 8)), length = BinaryPrimitives.ReadUInt64LittleEndian(plain.AsSpan(pos + 16));
            extents.Add((offset, length));
            pos += 24 + (int)length;                                    // record header length + data
        }
        Assert.Equal([(0UL, (ulong)Cluster), (2UL * Cluster, 3UL * Cluster), (200UL * Cluster, 2UL * Cluster), (Size - Cluster, (ulong)Cluster)], extents);
        Assert.True(plain.AsSpan(pos, 4).SequenceEqual("END\0"u8));
        Assert.Equal(4UL, BinaryPrimitives.ReadUInt64LittleEndian(plain.AsSpan(pos + 8)));
        Assert.Equal(7UL * Cluster, BinaryPrimitives.ReadUInt64LittleEndian(plain.AsSpan(pos + 16)));
        pos += 24;
        Assert.Equal(Crc32C.Append(0, plain.AsSpan(0, pos)), BinaryPrimitives.ReadUInt32LittleEndian(plain.AsSpan(pos)));
        Assert.Equal(pos + 4, plain.Length);
    }

    /// <summary>An export stream written by BlkTarget's earlier libzstd binding (`image export` of commit 1768f62,
    /// libzstd 1.5.4): a 1 MiB image, 4 KiB clusters, 4 KiB of 0xAB at 8192, 64 KiB of i % 251 at 131072 and
    /// 4 KiB of 0x5A in the last 4 KiB. Streams users already hold must import for as long as the format is version 1.</summary>
    private static readonly byte[] WrittenByTheLibzstdBinding =
    [
        0x28, 0xB5, 0x2F, 0xFD, 0x04, 0x58, 0x0D, 0x0B, 0x00, 0xB4, 0x12, 0x42, 0x4C, 0x4B, 0x54, 0x45, 0x58, 0x50, 0x00, 0x01, 0x00, 0x00, 0x00, 0x40,
        0x00, 0x10, 0x00, 0xE5, 0xF1, 0x83, 0x61, 0x44, 0x41, 0x54, 0x41, 0x00, 0x20, 0x00, 0xAB, 0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x02, 0x03, 0x04,
        0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x1C,
        0x1D, 0x1E, 0x1F, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2A, 0x2B, 0x2C, 0x2D, 0x2E, 0x2F, 0x30, 0x31, 0x32, 0x33, 0x34,
        0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x3B, 0x3C, 0x3D, 0x3E, 0x3F, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4A, 0x4B, 0x4C,
        0x4D, 0x4E, 0x4F, 0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x5B, 0x5C, 0x5D, 0x5E, 0x5F, 0x60, 0x61, 0x62, 0x63, 0x64,
        0x65, 0x66, 0x67, 0x68, 0x69, 0x6A, 0x6B, 0x6C, 0x6D, 0x6E, 0x6F, 0x70, 0x71, 0x72, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x7B, 0x7C,
        0x7D, 0x7E, 0x7F, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8B, 0x8C, 0x8D, 0x8E, 0x8F, 0x90, 0x91, 0x92, 0x93, 0x94,
        0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xAB, 0xAC,
        0xAD, 0xAE, 0xAF, 0xB0, 0xB1, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xBB, 0xBC, 0xBD, 0xBE, 0xBF, 0xC0, 0xC1, 0xC2, 0xC3, 0xC4,
        0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xCB, 0xCC, 0xCD, 0xCE, 0xCF, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xDB, 0xDC,
        0xDD, 0xDE, 0xDF, 0xE0, 0xE1, 0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA, 0xEB, 0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF2, 0xF3, 0xF4,
        0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFA, 0xF0, 0x0F, 0x5A, 0x45, 0x4E, 0x44, 0x00, 0x03, 0x00, 0x20, 0x01, 0x00, 0xB8, 0xE3, 0xCA, 0x3E, 0x13, 0x00,
        0x20, 0x0C, 0x90, 0x18, 0x58, 0xC4, 0x7F, 0x9C, 0xBF, 0x19, 0x08, 0xED, 0x02, 0xC0, 0xB8, 0x01, 0xA0, 0x45, 0xE8, 0x0B, 0xFC, 0xFD, 0x4F, 0x4B,
        0x19, 0x1C, 0x11, 0xC0, 0xC0, 0x0D, 0x38, 0x45, 0xF0, 0x1F, 0xE7, 0x6F, 0x2B, 0x17, 0x00, 0x62, 0x60, 0x1D, 0x60, 0xA0, 0x92, 0x00, 0x34, 0xB6,
        0x02, 0x25, 0xFB, 0x73, 0x47, 0xD4,
    ];

    [Fact]
    public void A_stream_written_by_the_earlier_libzstd_binding_still_imports()
    {
        string input = _files.PathFor("old.zst"), image = _files.PathFor("old.bti");
        File.WriteAllBytes(input, WrittenByTheLibzstdBinding);

        var summary = ExportStream.Import(input, image);

        var expected = new byte[1 << 20];
        expected.AsSpan(8192, 4096).Fill(0xAB);
        for (int i = 0; i < 65536; i++) expected[131072 + i] = (byte)(i % 251);
        expected.AsSpan((1 << 20) - 4096).Fill(0x5A);
        Assert.Equal(expected, ImageTestFiles.Contents(image));
        Assert.Equal(4096u, summary.ClusterSize);
        Assert.Equal(18UL, summary.AllocatedClusters);
        Assert.Equal(366, summary.CompressedBytes);
    }

    [Fact]
    public void The_system_zstd_tool_reads_what_we_write()
    {
        // A missing tool fails the test: a skipped check must never look like a passed one.
        Assert.True(File.Exists("/usr/bin/zstd"), "the zstd tool is required (Debian package zstd; tests/e2e/install-deps.sh installs it)");
        string stream = Exported(SampleImage());
        using var test = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("/usr/bin/zstd", ["-t", "-q", stream]))!;
        test.WaitForExit();
        Assert.Equal(0, test.ExitCode);
        // And what the tool writes (with its content checksum) imports: the format is plain zstd, not ours.
        string plain = _files.PathFor("tool-plain.bin"), byTool = _files.PathFor("tool.zst");
        File.WriteAllBytes(plain, Decompress(File.ReadAllBytes(stream)));
        using (var compress = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("/usr/bin/zstd", ["-q", "--check", "-19", plain, "-o", byTool]))!)
        {
            compress.WaitForExit();
            Assert.Equal(0, compress.ExitCode);
        }
        string restored = _files.PathFor("tool.bti");
        ExportStream.Import(byTool, restored);
        Assert.Equal(ImageTestFiles.Contents(_files.PathFor("src.bti")), ImageTestFiles.Contents(restored));
    }

    [Fact]
    public void A_stream_that_ends_inside_the_zstd_frame_says_truncated_and_a_corrupt_checksum_is_refused()
    {
        var whole = File.ReadAllBytes(Exported(SampleImage()));
        foreach (int keep in new[] { whole.Length - 1, whole.Length / 2, 10 })
            AssertImportFails(whole[..keep], "truncated");
        var flipped = (byte[])whole.Clone();
        flipped[^2] ^= 0xFF;   // inside zstd's content checksum (the last 4 bytes of the frame)
        AssertImportFails(flipped, "corrupt zstd data");
    }

    [Fact]
    public void An_empty_image_exports_to_a_tiny_stream_and_imports_empty()
    {
        string empty = _files.PathFor("empty.bti");
        ImageFile.Create(empty, 1UL << 30);
        string stream = Exported(empty, "empty.zst");
        Assert.True(new FileInfo(stream).Length < 200);
        var summary = ExportStream.Import(stream, _files.PathFor("empty2.bti"));
        Assert.Equal(0UL, summary.AllocatedClusters);
        Assert.Equal(1UL << 30, summary.VirtualSize);
    }

    [Fact]
    public void Import_can_choose_another_cluster_size()
    {
        string stream = Exported(SampleImage());
        string restored = _files.PathFor("small.bti");
        ExportStream.Import(stream, restored, clusterSize: 4096);
        Assert.Equal(4096u, ImageTestFiles.HeaderOf(restored).ClusterSize);
        Assert.Equal(ImageTestFiles.Contents(_files.PathFor("src.bti")), ImageTestFiles.Contents(restored));
    }

    [Theory]
    [InlineData(0.99)]
    [InlineData(0.5)]
    [InlineData(0.1)]
    [InlineData(0.0)]
    public void A_truncated_stream_is_refused(double keep)
    {
        var whole = File.ReadAllBytes(Exported(SampleImage()));
        var cut = whole[..(int)(whole.Length * keep)];
        AssertImportFails(cut, keep == 0 ? "empty" : "truncated");
    }

    [Fact]
    public void A_stream_cut_right_after_a_record_is_refused_as_truncated()
    {
        var plain = Decompress(File.ReadAllBytes(Exported(SampleImage())));
        int firstRecordEnd = ExportStream.HeaderLength + ExportStream.RecordHeaderLength + (int)Cluster;
        AssertImportFails(Compress(plain[..firstRecordEnd]), "truncated");
    }

    [Fact]
    public void A_flipped_byte_in_the_compressed_stream_is_refused()
    {
        var whole = File.ReadAllBytes(Exported(SampleImage()));
        whole[whole.Length / 2] ^= 0x10;
        string input = _files.PathFor("flipped.zst"), image = _files.PathFor("flipped.bti");
        File.WriteAllBytes(input, whole);
        Assert.ThrowsAny<IOException>(() => ExportStream.Import(input, image));
        Assert.False(File.Exists(image));
    }

    [Fact]
    public void Changed_data_in_an_otherwise_valid_stream_fails_the_checksum()
    {
        var plain = Decompress(File.ReadAllBytes(Exported(SampleImage())));
        plain[ExportStream.HeaderLength + ExportStream.RecordHeaderLength + 10] ^= 1;
        AssertImportFails(Compress(plain), "checksum mismatch");
    }

    [Fact]
    public void Records_out_of_order_or_out_of_range_are_refused()
    {
        var plain = Decompress(File.ReadAllBytes(Exported(SampleImage())));
        var beyond = (byte[])plain.Clone();
        BinaryPrimitives.WriteUInt64LittleEndian(beyond.AsSpan(ExportStream.HeaderLength + 8), Size);
        AssertImportFails(Compress(beyond), "impossible extent");
        var unknown = (byte[])plain.Clone();
        BinaryPrimitives.WriteUInt32LittleEndian(unknown.AsSpan(ExportStream.HeaderLength), 0x12345678);
        AssertImportFails(Compress(unknown), "unknown record type");
    }

    [Fact]
    public void Foreign_input_is_refused()
    {
        AssertImportFails(ImageTestFiles.Pattern(10_000, 9), "not zstd");
        AssertImportFails(Compress("just some text, compressed"u8.ToArray()), "not a BlkTarget export stream");
        AssertImportFails(File.ReadAllBytes(SampleImage("plain.bti")), "not zstd");
        var plain = Decompress(File.ReadAllBytes(Exported(SampleImage())));
        plain[20] ^= 1;   // virtual size: caught by the header checksum
        AssertImportFails(Compress(plain), "header checksum");
    }

    [Fact]
    public void Trailing_data_after_the_end_record_is_refused()
    {
        var plain = Decompress(File.ReadAllBytes(Exported(SampleImage())));
        AssertImportFails(Compress([.. plain, 0, 0, 0, 0]), "after the end record");
    }

    [Fact]
    public void Import_refuses_an_existing_image_and_leaves_it_alone()
    {
        string source = SampleImage();
        string stream = Exported(source);
        var before = File.ReadAllBytes(source);
        Assert.ThrowsAny<IOException>(() => ExportStream.Import(stream, source));
        Assert.Equal(before, File.ReadAllBytes(source));
    }

    [Fact]
    public void Export_refuses_an_existing_output_and_a_damaged_image()
    {
        string source = SampleImage();
        string existing = _files.Raw("existing.zst", 100, (0, [1, 2, 3]));
        Assert.ThrowsAny<IOException>(() => ExportStream.Export(source, existing));
        Assert.Equal(100, new FileInfo(existing).Length);
        ImageTestFiles.WriteEntry(source, 50, ImageTestFiles.ReadEntry(source, 0));
        string output = _files.PathFor("never.zst");
        Assert.ThrowsAny<ImageFormatException>(() => ExportStream.Export(source, output));
        Assert.False(File.Exists(output));
    }

    public void Dispose() => _files.Dispose();
}
