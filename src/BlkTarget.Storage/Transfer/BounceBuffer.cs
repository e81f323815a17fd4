using System.Runtime.CompilerServices;

namespace BlkTarget.Storage.Transfer;

/// <summary>
/// A request moved onto an aligned buffer because O_DIRECT cannot use its guest buffers: writes copy the data in
/// first, reads copy it out to the guest buffers at the end. Lives inside an operation slot on the pinned heap,
/// because the kernel is handed the address of <see cref="Iov"/>.
/// </summary>
internal unsafe struct BounceBuffer
{
    public IoVec Iov;
    public byte* Buffer;
    public nuint Length;
    public IoVec* GuestIov;
    public int GuestIovCount;

    public readonly bool Active => Buffer != null;

    /// <summary>Points <paramref name="cursor"/> at a bounce buffer from <paramref name="pool"/>.</summary>
    public void Begin(ref TransferCursor cursor, bool isWrite, BouncePool pool)
    {
        Buffer = pool.Rent((nuint)cursor.Remaining);
        Length = (nuint)cursor.Remaining;
        Iov = new IoVec(Buffer, Length);
        GuestIov = cursor.Iov;
        GuestIovCount = cursor.IovCount;
        if (isWrite) Copy(GuestIov, GuestIovCount, Buffer, toGuest: false);
        cursor.Iov = (IoVec*)Unsafe.AsPointer(ref Iov);
        cursor.IovCount = 1;
    }

    /// <summary>After a completed read: hands the data to the guest buffers.</summary>
    public readonly void CopyToGuest() => Copy(GuestIov, GuestIovCount, Buffer, toGuest: true);

    public void Release(BouncePool pool)
    {
        if (Buffer != null) pool.Return(Buffer, Length);
        Buffer = null;
    }

    private static void Copy(IoVec* iov, int count, byte* bounce, bool toGuest)
    {
        for (int i = 0; i < count; i++)
        {
            long n = (long)iov[i].Length;
            if (toGuest) System.Buffer.MemoryCopy(bounce, iov[i].Base, n, n);
            else System.Buffer.MemoryCopy(iov[i].Base, bounce, n, n);
            bounce += iov[i].Length;
        }
    }
}
