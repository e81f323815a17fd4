namespace BlkTarget.Storage.Image;

/// <summary>Reports how far a long operation got: <c>done</c> of <c>total</c> bytes.</summary>
public delegate void ProgressCallback(ulong done, ulong total);

/// <summary>What a copy did.</summary>
public readonly record struct CopyResult(ulong Size, ulong DataBytes, TimeSpan Elapsed);

/// <summary>
/// The sparse copy behind convert and export: only the source's data extents are read, and of those only the
/// blocks (of the sink's <see cref="DiskSink.Granularity"/>) holding a non-zero byte are written.
/// </summary>
public static class DiskCopy
{
    /// <summary>Bytes read per step: a multiple of every cluster size.</summary>
    public const int ChunkSize = 4 << 20;

    public static CopyResult Copy(DiskSource source, DiskSink sink, ProgressCallback? progress = null, CancellationToken cancel = default)
    {
        if (sink.Size < source.Size) throw new ArgumentException($"the destination ({sink.Size} bytes) is smaller than the source ({source.Size} bytes)");
        var started = System.Diagnostics.Stopwatch.StartNew();
        ulong granularity = sink.Granularity, size = source.Size, pos = 0;
        var buffer = GC.AllocateUninitializedArray<byte>(ChunkSize);
        progress?.Invoke(0, size);
        foreach (var (offset, length) in source.DataExtents())
        {
            ulong start = Math.Max(pos, offset / granularity * granularity);
            ulong end = Math.Min((offset + length + granularity - 1) / granularity * granularity, size);
            for (pos = start; pos < end;)
            {
                cancel.ThrowIfCancellationRequested();
                int n = (int)Math.Min((ulong)ChunkSize, end - pos);
                source.Read(pos, buffer.AsSpan(0, n));
                WriteNonZero(sink, pos, buffer.AsSpan(0, n));
                pos += (ulong)n;
                progress?.Invoke(pos, size);
            }
        }
        sink.Complete();
        progress?.Invoke(size, size);
        return new CopyResult(size, sink.BytesWritten, started.Elapsed);
    }

    /// <summary>Hands <paramref name="sink"/> the runs of <paramref name="data"/> (at virtual
    /// <paramref name="offset"/>) whose granularity blocks, cut at absolute multiples of the granularity, hold a
    /// non-zero byte.</summary>
    public static void WriteNonZero(DiskSink sink, ulong offset, ReadOnlySpan<byte> data)
    {
        ulong granularity = sink.Granularity;
        int runStart = -1, i = 0;
        while (i < data.Length)
        {
            int block = (int)Math.Min(granularity - (offset + (ulong)i) % granularity, (ulong)(data.Length - i));
            bool zero = data.Slice(i, block).IndexOfAnyExcept((byte)0) < 0;
            if (!zero && runStart < 0) runStart = i;
            if (zero && runStart >= 0)
            {
                sink.Write(offset + (ulong)runStart, data[runStart..i]);
                runStart = -1;
            }
            i += block;
        }
        if (runStart >= 0) sink.Write(offset + (ulong)runStart, data[runStart..]);
    }

    /// <summary>convert: copies <paramref name="sourcePath"/> (image or raw, by magic) into a new
    /// <paramref name="destinationPath"/> of <paramref name="format"/> ("raw" or "image").</summary>
    public static (CopyResult Result, string SourceFormat, ulong AllocatedClusters) Convert(string sourcePath, string destinationPath, string format,
        uint? clusterSize, ProgressCallback? progress = null, CancellationToken cancel = default)
    {
        if (format is not ("raw" or "image")) throw new ArgumentException($"unknown format '{format}' (raw or image)");
        if (File.Exists(destinationPath) || Directory.Exists(destinationPath)) throw new IOException($"{destinationPath} already exists");
        using var source = DiskSource.Open(sourcePath);
        if (format == "raw")
        {
            using var raw = RawSink.Create(destinationPath, source.Size);
            return (Copy(source, raw, progress, cancel), source.Format, 0);
        }
        using var image = ImageSink.Create(destinationPath, source.Size, clusterSize ?? source.ClusterSize ?? ImageHeader.DefaultClusterSize);
        var result = Copy(source, image, progress, cancel);
        return (result, source.Format, image.Image.AllocatedClusters);
    }
}
