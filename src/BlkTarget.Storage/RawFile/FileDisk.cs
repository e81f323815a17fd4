using BlkTarget.Storage.Interop;
using Microsoft.Extensions.Logging;
using static BlkTarget.Storage.Interop.FileNative;

namespace BlkTarget.Storage.RawFile;

/// <summary>
/// A regular file or block device exported as a disk, read and written through the reactors' io_uring with
/// iovecs that point straight into guest memory. Opened O_DIRECT by default; a lock (flock) keeps two exports
/// from writing the same file. A regular file always offers discard (hole punch) and write-zeroes; a block device
/// offers what its queue limits in sysfs allow (<see cref="BlockQueueLimits"/>).
/// </summary>
public sealed class FileDisk : IBlockDevice
{
    private readonly OwnedFd _fd;
    private readonly BlockDiscardWorker? _discardWorker;
    private readonly object _resizeGate = new();
    private volatile BlockDeviceInfo _info;

    private FileDisk(OwnedFd fd, FileDiskOptions options, BlockDeviceInfo info, uint memoryAlignment, bool isBlockDevice,
        BlockDiscardWorker? discardWorker, ILogger log)
    {
        _fd = fd;
        _discardWorker = discardWorker;
        Options = options;
        _info = info;
        MemoryAlignment = memoryAlignment;
        IsBlockDevice = isBlockDevice;
        Log = log;
    }

    public BlockDeviceInfo Info => _info;
    public FileDiskOptions Options { get; }
    /// <summary>Buffer address and length alignment O_DIRECT needs; guest buffers that miss it are bounced.</summary>
    public uint MemoryAlignment { get; }
    public bool IsBlockDevice { get; }
    internal int Fd => _fd.Fd;
    /// <summary>The BLKDISCARD fallback of a writable block device that can discard (tests force it with
    /// <see cref="BlockDiscardWorker.Preferred"/>); null otherwise.</summary>
    internal BlockDiscardWorker? DiscardWorker => _discardWorker;
    internal ILogger Log { get; }

    /// <summary>Opens (or with CreateSize creates) the file; throws <see cref="IOException"/> with one clear sentence.</summary>
    public static FileDisk Open(FileDiskOptions options, ILogger log)
    {
        if (options.BlockSize is not (512 or 4096)) throw new ArgumentException($"block size must be 512 or 4096, not {options.BlockSize}");
        var fd = OpenFile(options);
        try
        {
            Lock(fd, options);
            var stat = StatFd(fd.Fd) ?? throw new IOException($"{options.Path}: statx failed: {LastError()}");
            if (!stat.IsRegular && !stat.IsBlockDevice) throw new IOException($"{options.Path} is neither a regular file nor a block device");
            ulong size = stat.IsBlockDevice ? BlockDeviceSize(fd, options.Path) : stat.Size;
            if (size == 0) throw new IOException($"{options.Path} is empty (create it with --create SIZE)");
            if (size % options.BlockSize != 0)
                throw new IOException($"{options.Path}: size {size} is not a multiple of the block size {options.BlockSize}");
            (uint memAlign, uint offsetAlign) = FileNative.DirectIoAlignment(fd.Fd, stat);
            if (options.DirectIo && offsetAlign > options.BlockSize)
                throw new IOException($"{options.Path} needs {offsetAlign}-byte aligned O_DIRECT I/O: use a block size of at least {offsetAlign} or cache=writeback");
            var info = new BlockDeviceInfo(size, options.BlockSize, options.ReadOnly, SupportsDiscard: true, SupportsWriteZeroes: true,
                HasVolatileCache: true);
            BlockDiscardWorker? discardWorker = null;
            if (stat.IsBlockDevice)
            {
                info = BlockDeviceLimits(stat, offsetAlign, options, log).ApplyTo(info);
                if (info.SupportsDiscard && !info.ReadOnly) discardWorker = new BlockDiscardWorker(fd.Fd, options.Path);
            }
            return new FileDisk(fd, options, info, options.DirectIo ? memAlign : 1, stat.IsBlockDevice, discardWorker, log);
        }
        catch
        {
            fd.Dispose();
            throw;
        }
    }

    private static OwnedFd OpenFile(FileDiskOptions options)
    {
        int flags = (options.ReadOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC | (options.DirectIo ? O_DIRECT : 0);
        if (options.CreateSize is ulong createSize)
        {
            if (options.ReadOnly) throw new IOException("--create makes no sense for a read-only export");
            if (createSize == 0 || createSize % options.BlockSize != 0 || createSize > long.MaxValue)
                throw new IOException($"cannot create {options.Path}: size {createSize} must be a positive multiple of the block size {options.BlockSize}");
            int created = open(options.Path, flags | O_CREAT | O_EXCL, 0x1A0 /* 0640 */);
            if (created < 0) throw new IOException($"cannot create {options.Path}: {LastError()}");
            var fd = new OwnedFd(created);
            if (ftruncate(created, (long)createSize) != 0)
            {
                string error = LastError();
                fd.Dispose();
                System.IO.File.Delete(options.Path);
                throw new IOException($"cannot size {options.Path} to {createSize} bytes: {error}");
            }
            return fd;
        }
        int opened = open(options.Path, flags, 0);
        if (opened < 0) throw new IOException($"cannot open {options.Path}: {LastError()}");
        return new OwnedFd(opened);
    }

    /// <summary>Writable exports take an exclusive lock, read-only ones a shared lock: two targets can share a
    /// golden image read-only, but never write the same file.</summary>
    private static void Lock(OwnedFd fd, FileDiskOptions options)
    {
        if (TryLock(fd.Fd, options.ReadOnly, LockPatience)) return;
        throw new IOException($"{options.Path} is in use by another process (locked)");
    }

    /// <summary>
    /// The queue limits of a block device (sysfs), logged once: what the guest is offered depends on them. Without
    /// sysfs nothing is known about discard, so none is offered; write-zeroes works on every block device.
    /// </summary>
    private static BlockQueueLimits BlockDeviceLimits(in Stat stat, uint logicalBlockSize, FileDiskOptions options, ILogger log)
    {
        var limits = BlockQueueLimits.Read(stat.RdevMajor, stat.RdevMinor);
        if (limits is not { } known)
        {
            log.LogWarning("{Path}: no sysfs queue directory for block device {Major}:{Minor}; discard is not offered",
                options.Path, stat.RdevMajor, stat.RdevMinor);
            return new BlockQueueLimits(0, 0, 0, logicalBlockSize);
        }
        log.LogInformation("{Path}: block device {Major}:{Minor}, logical block {Logical} bytes, discard_max_bytes {DiscardMax} " +
            "(granularity {Granularity}), write_zeroes_max_bytes {WriteZeroesMax}", options.Path, stat.RdevMajor, stat.RdevMinor,
            known.LogicalBlockSize, known.DiscardMaxBytes, known.DiscardGranularity, known.WriteZeroesMaxBytes);
        return known;
    }

    private static unsafe ulong BlockDeviceSize(OwnedFd fd, string path)
    {
        ulong size;
        if (ioctl(fd.Fd, BLKGETSIZE64, &size) != 0) throw new IOException($"{path}: BLKGETSIZE64 failed: {LastError()}");
        return size;
    }

    /// <summary>
    /// Grows the disk online. A regular file is extended (ftruncate; the new space is a hole that reads as zeros,
    /// and the next FLUSH makes the new size durable with the data written into it). A block device cannot be
    /// grown from here: grow it first (lvextend, a larger LUN), then resize the disk up to its new size.
    /// </summary>
    /// <exception cref="ArgumentException">see <see cref="IBlockDevice.Resize"/>; a block device smaller than asked.</exception>
    /// <exception cref="IOException">ftruncate or BLKGETSIZE64 failed; nothing changed.</exception>
    public void Resize(ulong newSizeBytes)
    {
        lock (_resizeGate)
        {
            var info = _info;
            ResizeRules.CheckGrowth(info, newSizeBytes);
            if (IsBlockDevice)
            {
                ulong deviceSize = BlockDeviceSize(_fd, Options.Path);
                if (newSizeBytes > deviceSize)
                    throw new ArgumentException($"{Options.Path} is a block device of {deviceSize} bytes: grow it first (e.g. lvextend), then resize the disk to at most that");
            }
            else if (ftruncate(_fd.Fd, (long)newSizeBytes) != 0)
            {
                throw new IOException($"cannot grow {Options.Path} to {newSizeBytes} bytes: {LastError()}");
            }
            _info = info with { SizeBytes = newSizeBytes };   // after the medium grew: a request checked against it finds it
        }
    }

    public IBlockChannel OpenChannel(IoContext io, IBlockCompletionSink sink, int maxInFlight) => IsBlockDevice
        ? new BlockDeviceChannel(this, _discardWorker, io, sink, maxInFlight)
        : new FileChannel(this, io, sink, maxInFlight);

    public void Dispose()
    {
        _discardWorker?.Dispose();      // borrows the fd: goes first
        _fd.Dispose();
    }
}
