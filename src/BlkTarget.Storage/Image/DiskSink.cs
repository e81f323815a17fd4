using BlkTarget.Storage.Interop;
using static BlkTarget.Storage.Interop.FileNative;

namespace BlkTarget.Storage.Image;

/// <summary>
/// Something a copy writes a disk into: a new file that did not exist before. It receives only non-zero data
/// (runs of whole <see cref="Granularity"/> blocks, see <see cref="DiskCopy"/>); everything never written reads
/// as zeros. <see cref="Complete"/> makes the result durable; disposing an incomplete sink deletes its file, so a
/// failed or interrupted copy leaves nothing half-written behind.
/// </summary>
public abstract class DiskSink : IDisposable
{
    private bool _completed, _disposed;

    protected DiskSink(string path, ulong size)
    {
        Path = path;
        Size = size;
    }

    public string Path { get; }
    public ulong Size { get; }
    /// <summary>The block size zero detection works in: an all-zero block of this size is not written.</summary>
    public abstract uint Granularity { get; }
    /// <summary>Bytes written so far.</summary>
    public ulong BytesWritten { get; protected set; }

    public abstract void Write(ulong offset, ReadOnlySpan<byte> data);

    public void Complete()
    {
        Finish();
        _completed = true;
    }

    protected abstract void Finish();
    protected abstract void Close();
    /// <summary>Removes what an incomplete copy left (the sink's file, by default).</summary>
    protected virtual void DeleteIncomplete() => File.Delete(Path);

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        Close();
        if (!_completed) DeleteIncomplete();
    }
}

/// <summary>A new raw file: sized up front, so everything not written stays a hole (a sparse file).</summary>
public sealed unsafe class RawSink : DiskSink
{
    private readonly OwnedFd _fd;

    private RawSink(string path, ulong size, OwnedFd fd) : base(path, size) => _fd = fd;

    public override uint Granularity => 4096;

    public static RawSink Create(string path, ulong size)
    {
        int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0x1A0);
        if (fd < 0) throw new IOException($"cannot create {path}: {LastError()}");
        var owner = new OwnedFd(fd);
        var sink = new RawSink(path, size, owner);
        try
        {
            if (!TryLock(fd, shared: false, TimeSpan.Zero)) throw new IOException($"{path} is in use by another process (locked)");
            if (ftruncate(fd, (long)size) != 0) throw new IOException($"cannot size {path}: {LastError()}");
            return sink;
        }
        catch
        {
            sink.Dispose();
            throw;
        }
    }

    public override void Write(ulong offset, ReadOnlySpan<byte> data)
    {
        fixed (byte* p = data) PwriteFully(_fd.Fd, p, data.Length, (long)offset, Path);
        BytesWritten += (ulong)data.Length;
    }

    protected override void Finish()
    {
        if (FileNative.fsync(_fd.Fd) != 0) throw new IOException($"{Path}: fsync failed: {LastError()}");
    }

    protected override void Close() => _fd.Dispose();
}

/// <summary>
/// A new image built front to back: each written cluster is appended to the file in the order the data
/// arrives, and the map is written once, after all the data, then synced (<see cref="ImageFile.AppendCluster"/>).
/// </summary>
public sealed unsafe class ImageSink : DiskSink
{
    private readonly ImageFile _image;

    private ImageSink(string path, ulong size, ImageFile image) : base(path, size) => _image = image;

    public override uint Granularity => _image.Header.ClusterSize;
    public ImageFile Image => _image;

    public static ImageSink Create(string path, ulong size, uint clusterSize)
    {
        ImageFile.Create(path, size, clusterSize);
        ImageFile image;
        try
        {
            image = ImageFile.Open(path, readOnly: false, directIo: false);
        }
        catch
        {
            File.Delete(path);
            throw;
        }
        return new ImageSink(path, size, image);
    }

    public override void Write(ulong offset, ReadOnlySpan<byte> data)
    {
        int shift = _image.Header.ClusterShift;
        ulong cs = _image.ClusterSize, mask = cs - 1, length = (ulong)data.Length;
        fixed (byte* b = data)
        {
            if (length == 0) return;
            for (ulong v = offset >> shift; v <= (offset + length - 1) >> shift; v++) _image.AppendCluster(v);
            ulong done = 0;
            while (done < length)
            {
                ulong pos = offset + done, physical = _image.Entry(pos >> shift);
                ulong run = _image.MappedRunLength(pos, length - done);
                PwriteFully(_image.Fd, b + done, (int)run, (long)((physical << shift) + (pos & mask)), Path);
                done += run;
            }
        }
        BytesWritten += length;
    }

    protected override void Finish() => _image.WriteBuiltMap();

    protected override void Close() => _image.Dispose();
}
