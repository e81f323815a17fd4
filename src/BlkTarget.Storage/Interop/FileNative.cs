using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

// Every LibraryImport in this assembly passes only blittable structs and pointers, so the generated stubs
// need no runtime marshalling (and the interop layer cannot silently start copying buffers).
[assembly: DisableRuntimeMarshalling]

namespace BlkTarget.Storage.Interop;

/// <summary>
/// File-descriptor and file calls: the one close/read/write/fcntl, and for the file backends open with O_DIRECT,
/// flock, statx, fallocate, positioned I/O and block-device ioctls. Calls return -1 and set errno (read with
/// <see cref="Errno"/>) on failure.
/// </summary>
internal static unsafe partial class FileNative
{
    [LibraryImport("libc", SetLastError = true)]
    public static partial int close(int fd);

    [LibraryImport("libc", SetLastError = true)]
    public static partial nint read(int fd, void* buf, nint count);

    [LibraryImport("libc", SetLastError = true)]
    public static partial nint write(int fd, void* buf, nint count);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int fcntl(int fd, int cmd, int arg);

    public const int F_GETFL = 3, F_SETFL = 4, O_NONBLOCK = 0x800;
    public const int O_RDONLY = 0, O_RDWR = 2, O_CREAT = 0x40, O_EXCL = 0x80, O_DIRECT = 0x4000, O_CLOEXEC = 0x80000;
    public const int LOCK_SH = 1, LOCK_EX = 2, LOCK_NB = 4;
    public const int AT_FDCWD = -100, AT_EMPTY_PATH = 0x1000;
    public const uint STATX_TYPE = 0x1, STATX_MODE = 0x2, STATX_SIZE = 0x200, STATX_BLOCKS = 0x400, STATX_DIOALIGN = 0x2000;
    public const uint S_IFMT = 0xF000, S_IFREG = 0x8000, S_IFBLK = 0x6000;
    public const ulong BLKGETSIZE64 = 0x80081272;
    public const ulong BLKSSZGET = 0x1268;
    /// <summary>_IO(0x12, 119): discard the byte range {start, length} (two u64) of a block device; blocks until done.</summary>
    public const ulong BLKDISCARD = 0x1277;
    public const int FALLOC_FL_KEEP_SIZE = 0x01, FALLOC_FL_PUNCH_HOLE = 0x02, FALLOC_FL_ZERO_RANGE = 0x10;
    public const uint RWF_DSYNC = 0x2;
    public const int EWOULDBLOCK = Errno.EWOULDBLOCK, EINVAL = Errno.EINVAL, ENOSPC = Errno.ENOSPC, EOPNOTSUPP = Errno.EOPNOTSUPP;

    [LibraryImport("libc", EntryPoint = "open", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    public static partial int open(string path, int flags, int mode);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int flock(int fd, int operation);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int ftruncate(int fd, long length);

    [LibraryImport("libc", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    public static partial int chown(string path, int owner, int group);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int ioctl(int fd, ulong request, void* arg);

    [LibraryImport("libc", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    public static partial int statx(int dirfd, string path, int flags, uint mask, byte* buffer);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int fallocate(int fd, int mode, long offset, long length);

    [LibraryImport("libc", SetLastError = true)]
    public static partial nint preadv(int fd, IoVec* iov, int count, long offset);

    [LibraryImport("libc", SetLastError = true)]
    public static partial nint pwritev(int fd, IoVec* iov, int count, long offset);

    [LibraryImport("libc", SetLastError = true)]
    public static partial nint pread(int fd, void* buffer, nuint count, long offset);

    [LibraryImport("libc", SetLastError = true)]
    public static partial nint pwrite(int fd, void* buffer, nuint count, long offset);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int fsync(int fd);

    [LibraryImport("libc", SetLastError = true)]
    public static partial long lseek(int fd, long offset, int whence);

    public const int SEEK_DATA = 3, SEEK_HOLE = 4;

    /// <summary>Reads exactly buffer length bytes at offset (short only at end of file); throws on error.</summary>
    public static int PreadFully(int fd, byte* buffer, int count, long offset, string what)
    {
        int done = 0;
        while (done < count)
        {
            nint n = pread(fd, buffer + done, (nuint)(count - done), offset + done);
            if (n < 0)
            {
                if (Errno.Last == Errno.EINTR) continue;
                throw new IOException($"{what}: read failed: {LastError()}");
            }
            if (n == 0) break;
            done += (int)n;
        }
        return done;
    }

    /// <summary>Writes exactly count bytes at offset; throws on error.</summary>
    public static void PwriteFully(int fd, byte* buffer, int count, long offset, string what)
    {
        int done = 0;
        while (done < count)
        {
            nint n = pwrite(fd, buffer + done, (nuint)(count - done), offset + done);
            if (n < 0)
            {
                if (Errno.Last == Errno.EINTR) continue;
                throw new IOException($"{what}: write failed: {LastError()}");
            }
            done += (int)n;
        }
    }

    /// <summary>The statx fields the backend uses; <paramref name="RdevMajor"/>/<paramref name="RdevMinor"/> name a
    /// device node's device (its sysfs entry is /sys/dev/block/MAJOR:MINOR).</summary>
    public readonly record struct Stat(uint Mode, ulong Size, uint DioMemAlign, uint DioOffsetAlign, bool HasDioAlign, ulong Blocks,
        uint RdevMajor, uint RdevMinor)
    {
        /// <summary>Bytes the file occupies on disk (st_blocks are 512-byte units).</summary>
        public ulong AllocatedBytes => Blocks * 512;
        public bool IsRegular => (Mode & S_IFMT) == S_IFREG;
        public bool IsBlockDevice => (Mode & S_IFMT) == S_IFBLK;
    }

    public static Stat? StatFd(int fd)
    {
        byte* buffer = stackalloc byte[256];
        new Span<byte>(buffer, 256).Clear();
        if (statx(fd, "", AT_EMPTY_PATH, STATX_TYPE | STATX_MODE | STATX_SIZE | STATX_BLOCKS | STATX_DIOALIGN, buffer) != 0) return null;
        uint mask = *(uint*)buffer;
        return new Stat(*(ushort*)(buffer + 0x1C), *(ulong*)(buffer + 0x28), *(uint*)(buffer + 0x98), *(uint*)(buffer + 0x9C),
            (mask & STATX_DIOALIGN) != 0 && *(uint*)(buffer + 0x98) != 0, *(ulong*)(buffer + 0x30),
            *(uint*)(buffer + 0x80), *(uint*)(buffer + 0x84));
    }

    /// <summary>
    /// Takes a non-blocking flock (shared for read-only users, exclusive for writers). A process that was killed
    /// keeps its lock for a moment after it died, until the kernel tears down its io_uring (whose registered
    /// files hold the file open), so a conflict is retried for up to <paramref name="patience"/>.
    /// </summary>
    public static bool TryLock(int fd, bool shared, TimeSpan patience)
    {
        var deadline = DateTime.UtcNow + patience;
        while (flock(fd, (shared ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0)
        {
            if (Errno.Last != EWOULDBLOCK || DateTime.UtcNow > deadline) return false;
            Thread.Sleep(20);
        }
        return true;
    }

    public static readonly TimeSpan LockPatience = TimeSpan.FromSeconds(3);

    /// <summary>Buffer and offset alignment O_DIRECT needs for this file (statx DIOALIGN, else the device's
    /// logical sector size, else 512).</summary>
    public static (uint Memory, uint Offset) DirectIoAlignment(int fd, Stat stat)
    {
        if (stat.HasDioAlign) return (stat.DioMemAlign, stat.DioOffsetAlign);
        if (stat.IsBlockDevice)
        {
            int sector;
            if (ioctl(fd, BLKSSZGET, &sector) == 0 && sector > 0) return ((uint)sector, (uint)sector);
        }
        return (512, 512);
    }

    /// <summary>The text for the last call's errno (strerror), for messages.</summary>
    public static string LastError() => Errno.LastMessage;
}
