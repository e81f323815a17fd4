using System.Runtime.InteropServices;

namespace BlkTarget.Storage.IoUring;

/// <summary>
/// The io_uring ABI (include/uapi/linux/io_uring.h): syscall numbers, structs and constants. .NET has no
/// io_uring binding, so we call the three syscalls through libc's syscall(2).
/// </summary>
internal static unsafe partial class IoUringNative
{
    public const long SysSetup = 425;
    public const long SysEnter = 426;
    public const long SysRegister = 427;

    // io_uring_setup flags
    public const uint SetupCqSize = 1u << 3;
    public const uint SetupClamp = 1u << 4;
    public const uint SetupSubmitAll = 1u << 7;
    public const uint SetupCoopTaskrun = 1u << 8;
    public const uint SetupSingleIssuer = 1u << 12;
    public const uint SetupDeferTaskrun = 1u << 13;

    // features
    public const uint FeatSingleMmap = 1u << 0;
    public const uint FeatNoDrop = 1u << 1;

    // io_uring_enter flags
    public const uint EnterGetEvents = 1u << 0;

    // SQ ring flags (sq_ring->flags)
    public const uint SqCqOverflow = 1u << 1;

    // mmap offsets
    public const long OffSqRing = 0;
    public const long OffCqRing = 0x8000000;
    public const long OffSqes = 0x10000000;

    // register opcodes
    public const uint RegisterFiles = 2;
    public const uint UnregisterFiles = 3;
    public const uint RegisterEventFd = 4;
    public const uint RegisterFilesUpdate = 6;

    // opcodes
    public const byte OpNop = 0;
    public const byte OpReadv = 1;
    public const byte OpWritev = 2;
    public const byte OpFsync = 3;
    public const byte OpFallocate = 17;
    /// <summary>A command of the file's own driver (5.19+); block devices know BlockUringCmdDiscard from 6.12.</summary>
    public const byte OpUringCmd = 46;

    // IORING_OP_URING_CMD commands of block devices (include/uapi/linux/blkdev.h)
    /// <summary>_IO(0x12, 0): discard addr3 bytes at byte offset addr, asynchronously (BLKDISCARD without blocking).</summary>
    public const uint BlockUringCmdDiscard = 0x1200;

    // sqe flags
    public const byte SqeFixedFile = 1 << 0;

    public const uint FsyncDatasync = 1;

    [StructLayout(LayoutKind.Sequential)]
    public struct SqRingOffsets
    {
        public uint Head, Tail, RingMask, RingEntries, Flags, Dropped, Array, Resv1;
        public ulong UserAddr;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct CqRingOffsets
    {
        public uint Head, Tail, RingMask, RingEntries, Overflow, Cqes, Flags, Resv1;
        public ulong UserAddr;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct Params
    {
        public uint SqEntries, CqEntries, Flags, SqThreadCpu, SqThreadIdle, Features, WqFd;
        public uint Resv0, Resv1, Resv2;
        public SqRingOffsets SqOff;
        public CqRingOffsets CqOff;
    }

    /// <summary>struct io_uring_sqe (64 bytes), the fields we use.</summary>
    [StructLayout(LayoutKind.Explicit, Size = 64)]
    public struct Sqe
    {
        [FieldOffset(0)] public byte Opcode;
        [FieldOffset(1)] public byte Flags;
        [FieldOffset(2)] public ushort IoPrio;
        [FieldOffset(4)] public int Fd;
        [FieldOffset(8)] public ulong Offset;
        /// <summary>IORING_OP_URING_CMD: the command (shares its place with the offset; the next 4 bytes must be 0).</summary>
        [FieldOffset(8)] public uint CmdOp;
        [FieldOffset(16)] public ulong Addr;
        [FieldOffset(24)] public uint Len;
        [FieldOffset(28)] public uint OpFlags;
        [FieldOffset(32)] public ulong UserData;
        [FieldOffset(40)] public ushort BufIndex;
        [FieldOffset(42)] public ushort Personality;
        [FieldOffset(44)] public int SpliceFdIn;
        [FieldOffset(48)] public ulong Addr3;
        [FieldOffset(56)] public ulong Pad;
    }

    /// <summary>struct io_uring_cqe (16 bytes).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct Cqe
    {
        public ulong UserData;
        public int Res;
        public uint Flags;
    }

    /// <summary>struct io_uring_files_update.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct FilesUpdate
    {
        public uint Offset;
        public uint Resv;
        public ulong Fds;
    }

    [LibraryImport("libc", EntryPoint = "syscall", SetLastError = true)]
    private static partial long syscall2(long number, uint a, Params* b);

    [LibraryImport("libc", EntryPoint = "syscall", SetLastError = true)]
    private static partial long syscall6(long number, int fd, uint toSubmit, uint minComplete, uint flags, nint sig, nint sigSize);

    [LibraryImport("libc", EntryPoint = "syscall", SetLastError = true)]
    private static partial long syscall4(long number, int fd, uint opcode, void* arg, uint nrArgs);

    [LibraryImport("libc", SetLastError = true)]
    public static partial nint mmap(nint addr, nuint length, int prot, int flags, int fd, long offset);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int munmap(nint addr, nuint length);

    public static int Setup(uint entries, Params* p) => (int)syscall2(SysSetup, entries, p);

    public static int Enter(int fd, uint toSubmit, uint minComplete, uint flags) =>
        (int)syscall6(SysEnter, fd, toSubmit, minComplete, flags, 0, 0);

    public static int Register(int fd, uint opcode, void* arg, uint count) => (int)syscall4(SysRegister, fd, opcode, arg, count);

    public const int ProtRead = 1, ProtWrite = 2;
    public const int MapShared = 1, MapPopulate = 0x8000;
}
