using BlkTarget.Storage.Compression;
using BlkTarget.Storage.Image;

namespace BlkTarget.Storage.Tests.Compression;

/// <summary>The libzstd binding: streaming round trips, and clear errors for truncated or foreign input.</summary>
public sealed class ZstdStreamTests
{
    private static byte[] Sample(int length)
    {
        var data = new byte[length];
        var random = new Random(42);
        for (int i = 0; i < length; i += 4096)
        {
            if (i % 3 == 0) random.NextBytes(data.AsSpan(i, Math.Min(4096, length - i)));
            else data.AsSpan(i, Math.Min(4096, length - i)).Fill((byte)i);
        }
        return data;
    }

    private static byte[] Compress(byte[] data, int writeSize, int workers = 0)
    {
        var output = new MemoryStream();
        using (var zstd = new ZstdCompressStream(output, level: 3, workers, leaveOpen: true))
        {
            for (int i = 0; i < data.Length; i += writeSize) zstd.Write(data.AsSpan(i, Math.Min(writeSize, data.Length - i)));
            zstd.Finish();
        }
        return output.ToArray();
    }

    private static byte[] Decompress(byte[] compressed, int readSize)
    {
        using var zstd = new ZstdDecompressStream(new MemoryStream(compressed));
        var output = new MemoryStream();
        var buffer = new byte[readSize];
        int n;
        while ((n = zstd.Read(buffer)) > 0) output.Write(buffer, 0, n);
        return output.ToArray();
    }

    [Theory]
    [InlineData(1, 7)]
    [InlineData(4096, 1 << 20)]
    [InlineData(3 << 20, 100)]
    public void Data_survives_a_round_trip_in_any_write_and_read_sizes(int writeSize, int readSize)
    {
        var data = Sample(5 << 20);
        var compressed = Compress(data, writeSize);
        Assert.True(compressed.Length < data.Length / 2);
        Assert.Equal(data, Decompress(compressed, readSize));
    }

    [Fact]
    public void Worker_threads_produce_a_stream_that_decompresses_the_same()
    {
        var data = Sample(6 << 20);
        Assert.Equal(data, Decompress(Compress(data, 1 << 20, workers: 2), 65536));
    }

    [Fact]
    public void The_system_zstd_tool_reads_what_we_write()
    {
        // A missing tool fails the test: a skipped check must never look like a passed one.
        Assert.True(File.Exists("/usr/bin/zstd"), "the zstd tool is required (Debian package zstd; tests/e2e/install-deps.sh installs it)");
        var data = Sample(1 << 20);
        string path = Path.Combine(Path.GetTempPath(), $"blkt-{Guid.NewGuid():N}.zst");
        try
        {
            File.WriteAllBytes(path, Compress(data, 65536));
            using var process = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("/usr/bin/zstd", ["-t", "-q", path]))!;
            process.WaitForExit();
            Assert.Equal(0, process.ExitCode);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void Truncated_input_is_an_error_not_a_short_read()
    {
        var compressed = Compress(Sample(1 << 20), 65536);
        foreach (int keep in new[] { compressed.Length - 1, compressed.Length / 2, 10 })
        {
            var error = Assert.Throws<ZstdException>(() => Decompress(compressed[..keep], 65536));
            Assert.Contains("truncated", error.Message);
        }
    }

    [Fact]
    public void Foreign_and_corrupt_input_are_errors()
    {
        Assert.Contains("not zstd", Assert.Throws<ZstdException>(() => Decompress("plain text, not zstd"u8.ToArray(), 100)).Message);
        Assert.Contains("empty", Assert.Throws<ZstdException>(() => Decompress([], 100)).Message);
        var compressed = Compress(Sample(1 << 20), 65536);
        compressed[compressed.Length - 2] ^= 0xFF;   // inside zstd's content checksum
        Assert.Throws<ZstdException>(() => Decompress(compressed, 65536));
    }
}
