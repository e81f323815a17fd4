using System.Buffers.Binary;
using BlkTarget.Storage.Compression;
using ZstdSharp;
using ZstdSharp.Unsafe;

namespace BlkTarget.Storage.Image;

/// <summary>
/// The export stream (docs/image-format.md, "Export stream"): a zstd-compressed sequence of a 64-byte header,
/// DATA records (virtual offset, length, bytes) for the non-zero extents in ascending order, and an END record
/// with the record count, the data byte count and a CRC32C of every byte before it. Little-endian throughout.
/// </summary>
public static class ExportStream
{
    public const int HeaderLength = 64, RecordHeaderLength = 24, MaxRecordLength = DiskCopy.ChunkSize;
    public const uint CurrentVersion = 1;
    public static ReadOnlySpan<byte> Magic => "BLKTEXP\0"u8;
    /// <summary>Record types: the ASCII bytes "DATA" and "END\0" read as little-endian 32-bit values.</summary>
    public const uint DataRecord = 0x41544144, EndRecord = 0x00444E45;

    private const int OffVersion = 8, OffHeaderSize = 12, OffVirtualSize = 16, OffClusterSize = 24, OffFlags = 28, OffHeaderCrc = 60;

    /// <summary>What an export or import moved.</summary>
    public readonly record struct Summary(ulong VirtualSize, uint ClusterSize, ulong Records, ulong DataBytes, long CompressedBytes,
        ulong AllocatedClusters, TimeSpan Elapsed);

    internal static void WriteHeader(Span<byte> b, ulong virtualSize, uint clusterSize)
    {
        b[..HeaderLength].Clear();
        Magic.CopyTo(b);
        BinaryPrimitives.WriteUInt32LittleEndian(b[OffVersion..], CurrentVersion);
        BinaryPrimitives.WriteUInt32LittleEndian(b[OffHeaderSize..], HeaderLength);
        BinaryPrimitives.WriteUInt64LittleEndian(b[OffVirtualSize..], virtualSize);
        BinaryPrimitives.WriteUInt32LittleEndian(b[OffClusterSize..], clusterSize);
        BinaryPrimitives.WriteUInt32LittleEndian(b[OffHeaderCrc..], Crc32C.Append(0, b[..OffHeaderCrc]));
    }

    internal static (ulong VirtualSize, uint ClusterSize) ReadHeader(ReadOnlySpan<byte> b)
    {
        if (!b[..8].SequenceEqual(Magic)) throw new ExportFormatException("not a BlkTarget export stream (wrong magic)");
        uint version = BinaryPrimitives.ReadUInt32LittleEndian(b[OffVersion..]);
        if (version != CurrentVersion) throw new ExportFormatException($"unsupported export stream version {version} (this build reads version {CurrentVersion})");
        if (BinaryPrimitives.ReadUInt32LittleEndian(b[OffHeaderCrc..]) != Crc32C.Append(0, b[..OffHeaderCrc]))
            throw new ExportFormatException("export stream header checksum mismatch (corrupt stream)");
        if (BinaryPrimitives.ReadUInt32LittleEndian(b[OffHeaderSize..]) != HeaderLength) throw new ExportFormatException("unexpected export stream header size");
        if (BinaryPrimitives.ReadUInt32LittleEndian(b[OffFlags..]) != 0 || b[32..OffHeaderCrc].IndexOfAnyExcept((byte)0) >= 0)
            throw new ExportFormatException("unknown flags in the export stream header");
        ulong virtualSize = BinaryPrimitives.ReadUInt64LittleEndian(b[OffVirtualSize..]);
        uint clusterSize = BinaryPrimitives.ReadUInt32LittleEndian(b[OffClusterSize..]);
        try
        {
            ImageHeader.Validate(virtualSize, clusterSize);
        }
        catch (ImageFormatException e)
        {
            throw new ExportFormatException($"export stream header: {e.Message}");
        }
        return (virtualSize, clusterSize);
    }

    internal static void WriteRecordHeader(Span<byte> b, uint type, ulong a, ulong c)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(b, type);
        BinaryPrimitives.WriteUInt32LittleEndian(b[4..], 0);
        BinaryPrimitives.WriteUInt64LittleEndian(b[8..], a);
        BinaryPrimitives.WriteUInt64LittleEndian(b[16..], c);
    }

    /// <summary>export: writes the image at <paramref name="imagePath"/> as a stream to <paramref name="output"/>.</summary>
    public static Summary Export(string imagePath, Stream output, int level = 3, ProgressCallback? progress = null, CancellationToken cancel = default)
    {
        if (level is < 1 or > 19) throw new ArgumentOutOfRangeException(nameof(level), level, "zstd level must be between 1 and 19");
        using var source = ImageSource.Open(imagePath);
        var counted = new CountingWriteStream(output);
        ExportSink sink;
        CopyResult result;
        // ZstdSharp (a managed port of zstd) writes one frame; disposing the stream ends the frame. A failed export
        // therefore still ends in a complete frame, but without our END record: import calls it truncated.
        using (var zstd = new CompressionStream(counted, level, leaveOpen: true))
        {
            zstd.SetParameter(ZSTD_cParameter.ZSTD_c_checksumFlag, 1);   // zstd's own content checksum, as `zstd -t` checks
            if (Environment.ProcessorCount >= 4) zstd.SetParameter(ZSTD_cParameter.ZSTD_c_nbWorkers, Math.Min(Environment.ProcessorCount / 2, 4));
            sink = new ExportSink(zstd, source.Size, source.Image.Header.ClusterSize);
            using (sink) result = DiskCopy.Copy(source, sink, progress, cancel);
        }
        output.Flush();
        return new Summary(source.Size, source.Image.Header.ClusterSize, sink.Records, result.DataBytes, counted.BytesWritten,
            source.Image.AllocatedClusters, result.Elapsed);
    }

    /// <summary>export to a new file (refusing an existing path; deleted again if the export fails).</summary>
    public static Summary Export(string imagePath, string outputPath, int level = 3, ProgressCallback? progress = null, CancellationToken cancel = default)
    {
        var output = new FileStream(outputPath, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20);
        bool done = false;
        try
        {
            var summary = Export(imagePath, output, level, progress, cancel);
            output.Flush(flushToDisk: true);
            done = true;
            return summary;
        }
        finally
        {
            output.Dispose();
            if (!done) File.Delete(outputPath);
        }
    }

    /// <summary>import: creates the image <paramref name="imagePath"/> (it must not exist) from a stream; on any
    /// failure (truncated, corrupt or foreign stream, checksum mismatch) the new image is deleted again.</summary>
    public static Summary Import(Stream input, string imagePath, uint? clusterSize = null, ProgressCallback? progress = null, CancellationToken cancel = default)
    {
        if (File.Exists(imagePath) || Directory.Exists(imagePath)) throw new IOException($"{imagePath} already exists");
        var counted = new CountingReadStream(input);
        // checkEndOfStream: input that ends inside a frame throws instead of looking like a clean end.
        using var zstd = new DecompressionStream(counted, checkEndOfStream: true, leaveOpen: true);
        try
        {
            return Import(zstd, counted, imagePath, clusterSize, progress, cancel);
        }
        catch (ZstdException e) when (e.Code == ZSTD_ErrorCode.ZSTD_error_prefix_unknown)
        {
            throw new ExportFormatException("not zstd-compressed data (wrong magic)");
        }
        catch (ZstdException e)
        {
            throw new ExportFormatException($"corrupt zstd data: {e.Message}");
        }
        catch (EndOfStreamException)
        {
            throw new ExportFormatException("the stream is truncated (it ends inside the zstd frame)");
        }
    }

    private static Summary Import(Stream zstd, CountingReadStream counted, string imagePath, uint? clusterSize, ProgressCallback? progress, CancellationToken cancel)
    {
        var started = System.Diagnostics.Stopwatch.StartNew();
        var reader = new ChecksummedReader(zstd);
        var header = new byte[HeaderLength];
        int got = reader.ReadUpTo(header);
        if (got == 0) throw new ExportFormatException("the stream is empty");
        if (got < Magic.Length || !header.AsSpan(0, Magic.Length).SequenceEqual(Magic)) throw new ExportFormatException("not a BlkTarget export stream (wrong magic)");
        if (got < HeaderLength) throw new ExportFormatException("the stream is truncated (it ends inside the header)");
        var (virtualSize, streamClusterSize) = ReadHeader(header);
        using var sink = ImageSink.Create(imagePath, virtualSize, clusterSize ?? streamClusterSize);
        var record = new byte[RecordHeaderLength];
        var buffer = GC.AllocateUninitializedArray<byte>(DiskCopy.ChunkSize);
        ulong records = 0, dataBytes = 0, end = 0;
        progress?.Invoke(0, virtualSize);
        while (true)
        {
            cancel.ThrowIfCancellationRequested();
            reader.ReadExactly(record, "before the end record");
            uint type = BinaryPrimitives.ReadUInt32LittleEndian(record);
            ulong a = BinaryPrimitives.ReadUInt64LittleEndian(record.AsSpan(8)), length = BinaryPrimitives.ReadUInt64LittleEndian(record.AsSpan(16));
            if (BinaryPrimitives.ReadUInt32LittleEndian(record.AsSpan(4)) != 0) throw new ExportFormatException($"corrupt stream: reserved bytes set in record {records}");
            if (type == EndRecord)
            {
                uint computed = reader.Crc;
                var crc = new byte[4];
                reader.ReadExactly(crc, "inside the end record");
                if (BinaryPrimitives.ReadUInt32LittleEndian(crc) != computed) throw new ExportFormatException("checksum mismatch: the stream is corrupt");
                if (a != records || length != dataBytes)
                    throw new ExportFormatException($"corrupt stream: the end record counts {a} records and {length} bytes, the stream held {records} and {dataBytes}");
                if (zstd.Read(new byte[1]) != 0) throw new ExportFormatException("corrupt stream: data after the end record");
                break;
            }
            if (type != DataRecord) throw new ExportFormatException($"corrupt stream: unknown record type 0x{type:x8} after {records} records");
            ulong offset = a;
            if (offset % 512 != 0 || length == 0 || length % 512 != 0 || offset < end || length > virtualSize || offset > virtualSize - length)
                throw new ExportFormatException($"corrupt stream: record {records} has an impossible extent ({length} bytes at {offset})");
            for (ulong done = 0; done < length;)
            {
                cancel.ThrowIfCancellationRequested();
                int n = (int)Math.Min((ulong)buffer.Length, length - done);
                reader.ReadExactly(buffer.AsSpan(0, n), $"inside the data record at offset {offset}");
                DiskCopy.WriteNonZero(sink, offset + done, buffer.AsSpan(0, n));
                done += (ulong)n;
                progress?.Invoke(offset + done, virtualSize);
            }
            end = offset + length;
            records++;
            dataBytes += length;
        }
        sink.Complete();
        progress?.Invoke(virtualSize, virtualSize);
        return new Summary(virtualSize, sink.Image.Header.ClusterSize, records, dataBytes, counted.BytesRead, sink.Image.AllocatedClusters, started.Elapsed);
    }

    public static Summary Import(string inputPath, string imagePath, uint? clusterSize = null, ProgressCallback? progress = null, CancellationToken cancel = default)
    {
        using var input = new FileStream(inputPath, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20);
        return Import(input, imagePath, clusterSize, progress, cancel);
    }

    /// <summary>Writes DATA records for the runs <see cref="DiskCopy"/> hands it, then the END record.</summary>
    private sealed class ExportSink : DiskSink
    {
        private readonly Stream _output;
        private readonly byte[] _record = new byte[RecordHeaderLength];
        private uint _crc;

        public ExportSink(Stream output, ulong size, uint clusterSize) : base("", size)
        {
            _output = output;
            Granularity = clusterSize;
            var header = new byte[HeaderLength];
            WriteHeader(header, size, clusterSize);
            Emit(header);
        }

        public override uint Granularity { get; }
        public ulong Records { get; private set; }

        public override void Write(ulong offset, ReadOnlySpan<byte> data)
        {
            WriteRecordHeader(_record, DataRecord, offset, (ulong)data.Length);
            Emit(_record);
            Emit(data);
            Records++;
            BytesWritten += (ulong)data.Length;
        }

        protected override void Finish()
        {
            WriteRecordHeader(_record, EndRecord, Records, BytesWritten);
            Emit(_record);
            var crc = new byte[4];
            BinaryPrimitives.WriteUInt32LittleEndian(crc, _crc);
            _output.Write(crc);
        }

        private void Emit(ReadOnlySpan<byte> bytes)
        {
            _crc = Crc32C.Append(_crc, bytes);
            _output.Write(bytes);
        }

        protected override void Close() { }

        protected override void DeleteIncomplete() { }
    }

    /// <summary>Reads exact amounts from the decompressed stream, keeping the CRC32C of everything read.</summary>
    private sealed class ChecksummedReader(Stream stream)
    {
        public uint Crc { get; private set; }

        public void ReadExactly(Span<byte> buffer, string where)
        {
            if (ReadUpTo(buffer) < buffer.Length) throw new ExportFormatException($"the stream is truncated (it ends {where})");
        }

        /// <summary>Fills <paramref name="buffer"/> unless the stream ends first; returns the bytes read.</summary>
        public int ReadUpTo(Span<byte> buffer)
        {
            int done = 0;
            while (done < buffer.Length)
            {
                int n = stream.Read(buffer[done..]);
                if (n == 0) break;
                done += n;
            }
            Crc = Crc32C.Append(Crc, buffer[..done]);
            return done;
        }
    }
}

/// <summary>Passes writes through to <paramref name="inner"/>, counting them (the compressed size in
/// <see cref="ExportStream.Summary"/>, also when the output is a pipe that cannot tell its position).</summary>
internal sealed class CountingWriteStream(Stream inner) : Stream
{
    public long BytesWritten { get; private set; }
    public override bool CanRead => false;
    public override bool CanSeek => false;
    public override bool CanWrite => true;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => BytesWritten; set => throw new NotSupportedException(); }
    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));
    public override void Write(ReadOnlySpan<byte> buffer)
    {
        inner.Write(buffer);
        BytesWritten += buffer.Length;
    }
    public override void Flush() => inner.Flush();
    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
}

/// <summary>Passes reads through from <paramref name="inner"/>, counting them (compressed bytes consumed).</summary>
internal sealed class CountingReadStream(Stream inner) : Stream
{
    public long BytesRead { get; private set; }
    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => BytesRead; set => throw new NotSupportedException(); }
    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));
    public override int Read(Span<byte> buffer)
    {
        int n = inner.Read(buffer);
        BytesRead += n;
        return n;
    }
    public override void Flush() { }
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
}

/// <summary>A stream that is not a (complete, intact) BlkTarget export stream. The message says why.</summary>
public sealed class ExportFormatException(string message) : IOException(message);
