using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using BlkTarget.Storage.Interop;
using static BlkTarget.Storage.IoUring.IoUringNative;

namespace BlkTarget.Storage.IoUring;

/// <summary>
/// One io_uring instance, used by a single thread (the reactor that created it). Submissions are batched:
/// callers fill SQEs with the Prepare* methods and one <see cref="Submit"/> per loop iteration hands them all to
/// the kernel. Memory ordering follows the io_uring ABI: release store of the SQ tail after the SQEs are
/// written, acquire load of the CQ tail before CQEs are read, release store of the CQ head after.
/// </summary>
internal sealed unsafe class IoUring : IDisposable
{
    /// <summary>Setup flag sets tried in order: the newest first, falling back on kernels that refuse them.</summary>
    private static readonly uint[] FlagPreferences =
    [
        SetupSingleIssuer | SetupDeferTaskrun | SetupSubmitAll | SetupClamp | SetupCqSize,
        SetupSingleIssuer | SetupCoopTaskrun | SetupSubmitAll | SetupClamp | SetupCqSize,
        SetupCoopTaskrun | SetupClamp | SetupCqSize,
        SetupClamp | SetupCqSize,
        0,
    ];

    private readonly OwnedFd _fd;
    private readonly RingMapping _sqRing;
    private readonly RingMapping? _cqRing;
    private readonly RingMapping _sqes;
    private readonly uint* _sqHead;
    private readonly uint* _sqTail;
    private readonly uint* _sqFlags;
    private readonly uint _sqMask;
    private readonly Sqe* _sqeArray;
    private readonly uint* _cqHead;
    private readonly uint* _cqTail;
    private readonly uint _cqMask;
    private readonly Cqe* _cqes;
    private uint _sqTailLocal;
    private uint _toSubmit;

    private IoUring(OwnedFd fd, Params p)
    {
        _fd = fd;
        SetupFlags = p.Flags;
        Features = p.Features;
        SqEntries = p.SqEntries;
        CqEntries = p.CqEntries;
        nuint sqSize = p.SqOff.Array + p.SqEntries * sizeof(uint);
        nuint cqSize = p.CqOff.Cqes + p.CqEntries * (uint)sizeof(Cqe);
        bool single = (p.Features & FeatSingleMmap) != 0;
        _sqRing = RingMapping.Map(fd, single ? Math.Max(sqSize, cqSize) : sqSize, OffSqRing);
        try
        {
            _cqRing = single ? null : RingMapping.Map(fd, cqSize, OffCqRing);
            _sqes = RingMapping.Map(fd, p.SqEntries * (nuint)sizeof(Sqe), OffSqes);
        }
        catch
        {
            _cqRing?.Dispose();
            _sqRing.Dispose();
            throw;
        }
        byte* sq = _sqRing.Pointer;
        byte* cq = _cqRing is null ? sq : _cqRing.Pointer;
        _sqHead = (uint*)(sq + p.SqOff.Head);
        _sqTail = (uint*)(sq + p.SqOff.Tail);
        _sqFlags = (uint*)(sq + p.SqOff.Flags);
        _sqMask = *(uint*)(sq + p.SqOff.RingMask);
        uint* array = (uint*)(sq + p.SqOff.Array);
        for (uint i = 0; i < p.SqEntries; i++) array[i] = i;     // SQE slot i is always array entry i
        _sqeArray = (Sqe*)_sqes.Pointer;
        _cqHead = (uint*)(cq + p.CqOff.Head);
        _cqTail = (uint*)(cq + p.CqOff.Tail);
        _cqMask = *(uint*)(cq + p.CqOff.RingMask);
        _cqes = (Cqe*)(cq + p.CqOff.Cqes);
        _sqTailLocal = Volatile.Read(ref *_sqTail);
    }

    public uint SetupFlags { get; }
    public uint Features { get; }
    public uint SqEntries { get; }
    public uint CqEntries { get; }
    public int Fd => _fd.Fd;
    public bool DeferTaskrun => (SetupFlags & SetupDeferTaskrun) != 0;
    /// <summary>SQEs prepared but not yet handed to the kernel.</summary>
    public uint PendingSubmissions => _toSubmit;

    /// <summary>
    /// Creates a ring with at least <paramref name="entries"/> SQEs (and twice as many CQEs) using the best
    /// setup flags this kernel accepts.
    /// </summary>
    public static IoUring Create(uint entries)
    {
        IoUringException? last = null;
        foreach (uint flags in FlagPreferences)
        {
            var p = new Params { Flags = flags, CqEntries = entries * 2 };
            int fd = Setup(entries, &p);
            if (fd >= 0) return new IoUring(new OwnedFd(fd), p);
            last = IoUringException.FromErrno("io_uring_setup");
            if (last.Errno is not (22 or 95)) break;   // only EINVAL/EOPNOTSUPP mean "try fewer flags"
        }
        throw last!;
    }

    /// <summary>The kernel holds completions that did not fit the CQ ring (IORING_SQ_CQ_OVERFLOW); an enter
    /// with GETEVENTS moves them in once there is room.</summary>
    public bool CqOverflowPending => (Volatile.Read(ref *_sqFlags) & SqCqOverflow) != 0;

    /// <summary>Free SQE slots right now.</summary>
    public uint SqSpace => SqEntries - (_sqTailLocal - Volatile.Read(ref *_sqHead));

    /// <summary>Returns the next SQE to fill, zeroed, or null when the SQ ring is full (submit first).</summary>
    public Sqe* NextSqe()
    {
        if (SqSpace == 0) return null;
        Sqe* sqe = &_sqeArray[_sqTailLocal & _sqMask];
        Unsafe.InitBlock(sqe, 0, (uint)sizeof(Sqe));
        _sqTailLocal++;
        _toSubmit++;
        return sqe;
    }

    public static void PrepareReadv(Sqe* sqe, int fd, IoVec* iov, int count, ulong offset, ulong userData, bool fixedFile) =>
        PrepareRw(sqe, OpReadv, fd, (ulong)iov, (uint)count, offset, userData, fixedFile);

    public static void PrepareWritev(Sqe* sqe, int fd, IoVec* iov, int count, ulong offset, ulong userData, bool fixedFile, uint rwFlags = 0)
    {
        PrepareRw(sqe, OpWritev, fd, (ulong)iov, (uint)count, offset, userData, fixedFile);
        sqe->OpFlags = rwFlags;
    }

    public static void PrepareFsync(Sqe* sqe, int fd, bool dataOnly, ulong userData, bool fixedFile)
    {
        PrepareRw(sqe, OpFsync, fd, 0, 0, 0, userData, fixedFile);
        sqe->OpFlags = dataOnly ? FsyncDatasync : 0;
    }

    /// <summary>fallocate(2) through the ring: offset in off, length in addr, mode in len (the ABI's layout).</summary>
    public static void PrepareFallocate(Sqe* sqe, int fd, int mode, ulong offset, ulong length, ulong userData, bool fixedFile) =>
        PrepareRw(sqe, OpFallocate, fd, length, (uint)mode, offset, userData, fixedFile);

    /// <summary>
    /// Discards <paramref name="length"/> bytes at byte <paramref name="offset"/> of a block device (BLKDISCARD through
    /// the ring: IORING_OP_URING_CMD with BLOCK_URING_CMD_DISCARD). Both must be multiples of the device's logical
    /// block size. The completion is 0, or -EOPNOTSUPP when the device cannot discard or the kernel (before 6.12)
    /// has no such command, -EINVAL for a bad range or (before 5.19) an unknown opcode.
    /// </summary>
    public static void PrepareBlockDiscard(Sqe* sqe, int fd, ulong offset, ulong length, ulong userData, bool fixedFile)
    {
        PrepareRw(sqe, OpUringCmd, fd, offset, 0, 0, userData, fixedFile);
        sqe->CmdOp = BlockUringCmdDiscard;
        sqe->Addr3 = length;
    }

    public static void PrepareNop(Sqe* sqe, ulong userData) => PrepareRw(sqe, OpNop, -1, 0, 0, 0, userData, false);

    private static void PrepareRw(Sqe* sqe, byte op, int fd, ulong addr, uint len, ulong offset, ulong userData, bool fixedFile)
    {
        sqe->Opcode = op;
        sqe->Flags = fixedFile ? SqeFixedFile : (byte)0;
        sqe->Fd = fd;
        sqe->Addr = addr;
        sqe->Len = len;
        sqe->Offset = offset;
        sqe->UserData = userData;
    }

    /// <summary>
    /// Hands prepared SQEs to the kernel and, with DEFER_TASKRUN, lets it post finished completions: one
    /// io_uring_enter for the whole batch. <paramref name="waitFor"/> &gt; 0 blocks until that many CQEs exist;
    /// <paramref name="reap"/> makes the kernel post finished completions even when nothing is submitted.
    /// Returns the number of SQEs consumed.
    /// </summary>
    public int Submit(uint waitFor = 0, bool reap = false)
    {
        uint count = _toSubmit;
        if (count == 0 && waitFor == 0 && !reap) return 0;
        Volatile.Write(ref *_sqTail, _sqTailLocal);
        // GETEVENTS also runs the ring's pending task work, which is what posts completions under
        // DEFER_TASKRUN (and promptly under COOP_TASKRUN).
        uint flags = waitFor > 0 || reap ? EnterGetEvents : 0;
        while (true)
        {
            int n = Enter(_fd.Fd, count, waitFor, flags);
            if (n >= 0)
            {
                _toSubmit -= (uint)Math.Min(n, (int)count);
                return n;
            }
            int errno = Marshal.GetLastPInvokeError();
            if (errno == 4) continue;                   // EINTR
            if (errno is 11 or 16) return 0;            // EAGAIN/EBUSY: completions must be reaped first
            throw IoUringException.FromErrno("io_uring_enter");
        }
    }

    /// <summary>Reads the next completion without consuming it.</summary>
    public bool TryPeekCompletion(out Cqe cqe)
    {
        uint head = *_cqHead;
        if (head == Volatile.Read(ref *_cqTail))
        {
            cqe = default;
            return false;
        }
        cqe = _cqes[head & _cqMask];
        return true;
    }

    /// <summary>Consumes the completion last returned by <see cref="TryPeekCompletion"/>.</summary>
    public void AdvanceCompletion() => Volatile.Write(ref *_cqHead, *_cqHead + 1);

    /// <summary>Has the ring signal <paramref name="eventFd"/> whenever a completion is posted, so a sleeping
    /// reactor wakes for finished I/O as it does for guest kicks.</summary>
    public void RegisterEventFd(int eventFd)
    {
        int fd = eventFd;
        if (Register(_fd.Fd, IoUringNative.RegisterEventFd, &fd, 1) < 0) throw IoUringException.FromErrno("IORING_REGISTER_EVENTFD");
    }

    /// <summary>Registers a table of <paramref name="count"/> empty file slots, filled later with <see cref="SetFile"/>.</summary>
    public void RegisterFileTable(int count)
    {
        var fds = new int[count];
        Array.Fill(fds, -1);
        fixed (int* p = fds)
            if (Register(_fd.Fd, RegisterFiles, p, (uint)count) < 0) throw IoUringException.FromErrno("IORING_REGISTER_FILES");
    }

    /// <summary>Puts <paramref name="fd"/> (or -1 to clear) into registered file slot <paramref name="slot"/>.</summary>
    public void SetFile(int slot, int fd)
    {
        int value = fd;
        var update = new FilesUpdate { Offset = (uint)slot, Fds = (ulong)&value };
        if (Register(_fd.Fd, RegisterFilesUpdate, &update, 1) < 0) throw IoUringException.FromErrno("IORING_REGISTER_FILES_UPDATE");
    }

    public void Dispose()
    {
        _sqes.Dispose();
        _cqRing?.Dispose();
        _sqRing.Dispose();
        _fd.Dispose();
    }
}
