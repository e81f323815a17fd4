using System.Runtime.CompilerServices;

namespace BlkTarget.Storage.Transfer;

/// <summary>
/// Where a read or write stands: the device offset, the bytes left, and the iovecs still to move. Progress
/// consumes iovecs from the front in place (the array belongs to the request, which lets channels do that).
/// </summary>
internal unsafe struct TransferCursor
{
    public ulong Offset;
    public ulong Remaining;
    public IoVec* Iov;
    public int IovCount;

    public TransferCursor(in BlockRequest request)
    {
        Offset = request.Offset;
        Remaining = request.Length;
        Iov = request.Iov;
        IovCount = request.IovCount;
    }

    /// <summary>Moves past <paramref name="done"/> bytes, e.g. after a short transfer or a finished piece.</summary>
    public void Advance(ulong done)
    {
        Offset += done;
        Remaining -= done;
        while (done > 0 && IovCount > 0)
        {
            if (done >= Iov->Length)
            {
                done -= Iov->Length;
                Iov++;
                IovCount--;
            }
            else
            {
                Iov->Base += done;
                Iov->Length -= (nuint)done;
                done = 0;
            }
        }
    }

    /// <summary>Fills the next <paramref name="length"/> bytes of the buffers with zeros (without advancing).</summary>
    public readonly void ZeroFront(ulong length)
    {
        for (int i = 0; i < IovCount && length > 0; i++)
        {
            ulong n = Math.Min(length, Iov[i].Length);
            Unsafe.InitBlockUnaligned(Iov[i].Base, 0, (uint)n);
            length -= n;
        }
    }

    /// <summary>True when every non-empty buffer's address and length are multiples of <paramref name="alignment"/>
    /// (the kernel ignores empty iovecs when it checks O_DIRECT alignment).</summary>
    public readonly bool IsAligned(uint alignment)
    {
        nuint mask = alignment - 1;
        for (int i = 0; i < IovCount; i++)
            if (Iov[i].Length != 0 && (((nuint)Iov[i].Base & mask) != 0 || (Iov[i].Length & mask) != 0)) return false;
        return true;
    }
}
