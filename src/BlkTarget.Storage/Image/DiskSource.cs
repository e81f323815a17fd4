using BlkTarget.Storage.Interop;
using static BlkTarget.Storage.Interop.FileNative;

namespace BlkTarget.Storage.Image;

/// <summary>
/// Something to copy a disk from (convert, export): a BlkTarget image or a raw file / block device, opened
/// read-only and never written. It knows where its data may be (<see cref="DataExtents"/>), so copies skip
/// unallocated clusters and file holes without reading them.
/// </summary>
public abstract class DiskSource : IDisposable
{
    public required string Path { get; init; }
    /// <summary>Bytes of the virtual disk (a raw file's size rounded up to 512).</summary>
    public required ulong Size { get; init; }
    /// <summary>"image" or "raw".</summary>
    public abstract string Format { get; }
    /// <summary>An image's cluster size; null for raw sources.</summary>
    public virtual uint? ClusterSize => null;

    /// <summary>The regions that may hold non-zero data, in ascending order, not overlapping; everything else
    /// reads as zeros.</summary>
    public abstract IEnumerable<(ulong Offset, ulong Length)> DataExtents();

    /// <summary>Fills <paramref name="buffer"/> with the disk's bytes at <paramref name="offset"/> (zeros for
    /// holes, unallocated clusters and anything past the end of the underlying file).</summary>
    public abstract void Read(ulong offset, Span<byte> buffer);

    /// <summary>Opens <paramref name="path"/> as an image when it starts with the image magic, as raw otherwise
    /// (a file with the magic but a damaged header is an error, not raw data).</summary>
    public static DiskSource Open(string path)
    {
        if (LooksLikeImage(path)) return ImageSource.Open(path);
        return RawSource.Open(path);
    }

    /// <summary>Whether the file starts with the image magic. Throws IOException when it cannot be read.</summary>
    public static unsafe bool LooksLikeImage(string path)
    {
        using var fd = OpenReadOnly(path);
        Span<byte> head = stackalloc byte[8];
        int n;
        fixed (byte* p = head) n = PreadFully(fd.Fd, p, head.Length, 0, path);
        return n == head.Length && head.SequenceEqual(ImageHeader.Magic);
    }

    internal static OwnedFd OpenReadOnly(string path)
    {
        int fd = open(path, O_RDONLY | O_CLOEXEC, 0);
        if (fd < 0) throw new IOException($"cannot open {path}: {LastError()}");
        return new OwnedFd(fd);
    }

    public abstract void Dispose();
}

/// <summary>A BlkTarget image as a copy source.</summary>
public sealed unsafe class ImageSource : DiskSource
{
    private ImageFile _image = null!;

    public override string Format => "image";
    public override uint? ClusterSize => _image.Header.ClusterSize;
    public ImageFile Image => _image;

    public static new ImageSource Open(string path)
    {
        var image = ImageFile.Open(path, readOnly: true, directIo: false);
        return new ImageSource { Path = path, Size = image.Header.VirtualSize, _image = image };
    }

    public override IEnumerable<(ulong Offset, ulong Length)> DataExtents()
    {
        ulong entries = _image.Header.MapEntries, cs = _image.ClusterSize;
        ulong v = 0;
        while (v < entries)
        {
            if (_image.Entry(v) == 0)
            {
                v++;
                continue;
            }
            ulong first = v;
            while (v < entries && _image.Entry(v) != 0) v++;
            ulong start = first * cs, end = Math.Min(v * cs, Size);
            yield return (start, end - start);
        }
    }

    public override void Read(ulong offset, Span<byte> buffer)
    {
        int shift = _image.Header.ClusterShift;
        ulong cs = _image.ClusterSize, mask = cs - 1, length = (ulong)buffer.Length;
        fixed (byte* b = buffer)
        {
            ulong done = 0;
            while (done < length)
            {
                ulong pos = offset + done, physical = _image.Entry(pos >> shift);
                ulong run = _image.MappedRunLength(pos, length - done);
                int got = 0;
                if (physical != 0) got = PreadFully(_image.Fd, b + done, (int)run, (long)((physical << shift) + (pos & mask)), Path);
                // Unallocated, or mapped past the end of the file (an allocation a crash cut short): zeros.
                new Span<byte>(b + done + (ulong)got, (int)run - got).Clear();
                done += run;
            }
        }
    }

    public override void Dispose() => _image.Dispose();
}

/// <summary>A raw file or block device as a copy source; SEEK_DATA/SEEK_HOLE tell where its data is.</summary>
public sealed unsafe class RawSource : DiskSource
{
    private OwnedFd _fd = null!;

    public override string Format => "raw";
    /// <summary>Bytes in the file (<see cref="DiskSource.Size"/> rounds this up to 512).</summary>
    public ulong FileSize { get; private init; }

    public static new RawSource Open(string path)
    {
        var fd = OpenReadOnly(path);
        try
        {
            if (!TryLock(fd.Fd, shared: true, LockPatience)) throw new IOException($"{path} is in use by another process (locked)");
            var stat = StatFd(fd.Fd) ?? throw new IOException($"{path}: statx failed: {LastError()}");
            ulong size;
            if (stat.IsRegular)
            {
                size = stat.Size;
            }
            else if (stat.IsBlockDevice)
            {
                ulong bytes;
                if (ioctl(fd.Fd, BLKGETSIZE64, &bytes) != 0) throw new IOException($"{path}: cannot read the device size: {LastError()}");
                size = bytes;
            }
            else
            {
                throw new IOException($"{path} is not a regular file or block device");
            }
            if (size == 0) throw new IOException($"{path} is empty");
            return new RawSource { Path = path, Size = (size + 511) / 512 * 512, FileSize = size, _fd = fd };
        }
        catch
        {
            fd.Dispose();
            throw;
        }
    }

    public override IEnumerable<(ulong Offset, ulong Length)> DataExtents()
    {
        ulong pos = 0;
        while (pos < FileSize)
        {
            long data = lseek(_fd.Fd, (long)pos, SEEK_DATA);
            if (data < 0)
            {
                if (Errno.Last == Errno.ENXIO) yield break;   // no data after pos
                yield return (pos, FileSize - pos);                        // no SEEK_DATA here: all of it may be data
                yield break;
            }
            long hole = lseek(_fd.Fd, data, SEEK_HOLE);
            ulong end = hole < 0 ? FileSize : Math.Min((ulong)hole, FileSize);
            if ((ulong)data >= end) yield break;
            yield return ((ulong)data, end - (ulong)data);
            pos = end;
        }
    }

    public override void Read(ulong offset, Span<byte> buffer)
    {
        int got = 0;
        fixed (byte* b = buffer) got = PreadFully(_fd.Fd, b, buffer.Length, (long)offset, Path);
        buffer[got..].Clear();
    }

    public override void Dispose() => _fd.Dispose();
}
