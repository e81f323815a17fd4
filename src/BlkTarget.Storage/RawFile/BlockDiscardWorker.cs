using System.Runtime.InteropServices;
using BlkTarget.Storage.Offload;
using static BlkTarget.Storage.Interop.FileNative;

namespace BlkTarget.Storage.RawFile;

/// <summary>One discard: <paramref name="Length"/> bytes at byte <paramref name="Offset"/>, completed as operation
/// <paramref name="Tag"/> of target <paramref name="Target"/> of <paramref name="Io"/>.</summary>
internal readonly record struct DiscardJob(IoContext Io, int Target, ulong Tag, ulong Offset, ulong Length);

/// <summary>
/// Discards through the BLKDISCARD ioctl on a thread of its own, for kernels whose io_uring refuses
/// BLOCK_URING_CMD_DISCARD (before 6.12): the ioctl returns only when the device is done, which a reactor must never
/// wait for. The thread starts with the first discard, so kernels that take the io_uring command never have it.
/// One per block device; it only borrows the device's fd (the disk outlives it).
/// </summary>
internal sealed unsafe class BlockDiscardWorker(int fd, string name) : OffloadThread<DiscardJob>($"discard {Path.GetFileName(name)}")
{
    private volatile bool _preferred;

    /// <summary>
    /// Set once the ioctl discarded a range the io_uring command had refused: this kernel lacks the command, so later
    /// discards come here straight away. (A refusal because the device cannot discard fails the ioctl as well and
    /// sets nothing.)
    /// </summary>
    public bool Preferred
    {
        get => _preferred;
        internal set => _preferred = value;
    }

    /// <summary>Queues a discard of [<paramref name="offset"/>, +<paramref name="length"/>) (bytes, aligned to the
    /// logical block size); any thread. The caller has counted it with <see cref="IoContext.BeginPosted"/>.</summary>
    public void Enqueue(IoContext io, int target, ulong tag, ulong offset, ulong length) => Enqueue(new DiscardJob(io, target, tag, offset, length));

    protected override void Handle(in DiscardJob job) => job.Io.PostCompletion(job.Target, job.Tag, Discard(job.Offset, job.Length));

    private int Discard(ulong offset, ulong length)
    {
        ulong* range = stackalloc ulong[2];
        range[0] = offset;
        range[1] = length;
        if (ioctl(fd, BLKDISCARD, range) != 0) return -Marshal.GetLastPInvokeError();
        _preferred = true;
        return 0;
    }
}
