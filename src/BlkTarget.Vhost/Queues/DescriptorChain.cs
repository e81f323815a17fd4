using BlkTarget.Storage;
using BlkTarget.Vhost.Memory;

namespace BlkTarget.Vhost.Queues;

/// <summary>Why a descriptor chain was refused.</summary>
public enum ChainError
{
    None,
    HeadOutOfRange,
    NextOutOfRange,
    /// <summary>More descriptors than the table holds: a loop or an over-long chain.</summary>
    TooLong,
    /// <summary>A buffer (or indirect table) lies outside guest memory or wraps around.</summary>
    BadAddress,
    /// <summary>Indirect table length zero, not a multiple of 16, or larger than allowed.</summary>
    BadIndirectLength,
    NestedIndirect,
    /// <summary>An indirect descriptor that also has NEXT, or that is not the head of the chain.</summary>
    MisplacedIndirect,
    /// <summary>A device-readable buffer after a device-writable one (virtio 1.2 2.7.4.2).</summary>
    ReadableAfterWritable,
    /// <summary>Packed ring: the buffer ID is not below the queue size.</summary>
    IdOutOfRange,
    /// <summary>Packed ring: the buffer ID names a chain still in flight.</summary>
    IdInFlight,
    /// <summary>Packed ring: a descriptor after NEXT is not available in the expected wrap (an unfinished chain), or
    /// the chain would put more descriptors in flight than the ring holds.</summary>
    NotAvailable,
}

/// <summary>
/// The buffers of one walked chain: device-readable segments first, then device-writable ones, in guest order,
/// already translated to pointers in this process. Segments beyond the capacity are counted but not stored;
/// the last writable byte is always remembered so an over-long request can still be failed cleanly.
/// </summary>
public unsafe struct ChainBuffers
{
    public IoVec* Segments;
    public int Capacity;
    public int Count;
    public int ReadableCount;
    public bool Overflowed;
    public ulong ReadableBytes;
    public ulong WritableBytes;
    /// <summary>Pointer to the last byte of the last writable buffer (the virtio-blk status byte), or null.</summary>
    public byte* LastWritableByte;
    public int DescriptorCount;
    public bool SeenWritable;

    public ChainBuffers(IoVec* segments, int capacity)
    {
        Segments = segments;
        Capacity = capacity;
    }

    public readonly int WritableCount => Count - ReadableCount;

    /// <summary>Copies <paramref name="destination"/>.Length bytes from byte <paramref name="offset"/> of the
    /// device-readable buffers, leaving the segments as they are (unlike a cursor that consumes them: a model that
    /// looks at a request before processing it parses the same chain again later); false if they are shorter.
    /// What it reads is guest memory the guest may still change: use it for decisions the later parse re-checks.</summary>
    public readonly bool TryPeekReadable(ulong offset, Span<byte> destination)
    {
        int copied = 0;
        for (int i = 0; i < ReadableCount && copied < destination.Length; i++)
        {
            IoVec v = Segments[i];
            if (offset >= v.Length)
            {
                offset -= v.Length;
                continue;
            }
            int n = (int)Math.Min((ulong)(destination.Length - copied), v.Length - offset);
            new ReadOnlySpan<byte>(v.Base + offset, n).CopyTo(destination[copied..]);
            copied += n;
            offset = 0;
        }
        return copied == destination.Length;
    }

    /// <summary>Forgets the previous chain; the segment storage stays.</summary>
    public void Clear()
    {
        Count = 0;
        ReadableCount = 0;
        Overflowed = false;
        ReadableBytes = 0;
        WritableBytes = 0;
        LastWritableByte = null;
        DescriptorCount = 0;
        SeenWritable = false;
    }
}

/// <summary>
/// Walks a split-ring descriptor chain that the guest wrote and turns it into <see cref="ChainBuffers"/>.
/// Every descriptor is copied to a local before it is checked, so a guest rewriting the table meanwhile
/// cannot make us use a value we did not validate.
/// </summary>
public static unsafe class DescriptorChainWalker
{
    /// <summary>Upper bound for indirect tables, as in QEMU (VIRTQUEUE_MAX_SIZE).</summary>
    public const int MaxIndirectEntries = 1024;

    public static ChainError Walk(GuestMemory memory, VirtqDescriptor* table, uint tableSize, ushort head, ref ChainBuffers buffers)
    {
        buffers.Clear();
        if (head >= tableSize) return ChainError.HeadOutOfRange;

        VirtqDescriptor first = table[head];
        if ((first.Flags & VirtqDescriptor.FlagIndirect) != 0)
        {
            if ((first.Flags & VirtqDescriptor.FlagNext) != 0) return ChainError.MisplacedIndirect;
            if (first.Len == 0 || first.Len % 16 != 0 || first.Len / 16 > MaxIndirectEntries) return ChainError.BadIndirectLength;
            var indirect = (VirtqDescriptor*)memory.TranslateGuestRange(first.Addr, first.Len);
            if (indirect == null) return ChainError.BadAddress;
            return WalkTable(memory, indirect, first.Len / 16, 0, insideIndirect: true, ref buffers);
        }
        return WalkTable(memory, table, tableSize, head, insideIndirect: false, ref buffers);
    }

    private static ChainError WalkTable(GuestMemory memory, VirtqDescriptor* table, uint tableSize, uint index, bool insideIndirect, ref ChainBuffers buffers)
    {
        uint visited = 0;
        while (true)
        {
            // A chain can never hold more descriptors than its table: one more means a loop.
            if (++visited > tableSize) return ChainError.TooLong;
            VirtqDescriptor d = table[index];
            if ((d.Flags & VirtqDescriptor.FlagIndirect) != 0)
                return insideIndirect ? ChainError.NestedIndirect : ChainError.MisplacedIndirect;

            var error = AddDescriptor(memory, d.Addr, d.Len, (d.Flags & VirtqDescriptor.FlagWrite) != 0, ref buffers);
            if (error != ChainError.None) return error;

            if ((d.Flags & VirtqDescriptor.FlagNext) == 0) return ChainError.None;
            if (d.Next >= tableSize) return ChainError.NextOutOfRange;
            index = d.Next;
        }
    }

    /// <summary>Adds one descriptor's buffer to <paramref name="buffers"/>, refusing a device-readable buffer after a
    /// writable one (virtio 1.2 2.7.4.2, 2.8.4.2); shared by the split and packed walkers.</summary>
    internal static ChainError AddDescriptor(GuestMemory memory, ulong addr, uint len, bool writable, ref ChainBuffers buffers)
    {
        if (!writable && buffers.SeenWritable) return ChainError.ReadableAfterWritable;
        buffers.SeenWritable |= writable;
        var error = AddBuffer(memory, addr, len, writable, ref buffers);
        if (error == ChainError.None) buffers.DescriptorCount++;
        return error;
    }

    /// <summary>Translates one buffer, splitting it where it crosses from one memory region into the next.</summary>
    private static ChainError AddBuffer(GuestMemory memory, ulong addr, uint len, bool writable, ref ChainBuffers buffers)
    {
        if (addr + len < addr) return ChainError.BadAddress;
        ulong left = len;
        while (left > 0)
        {
            if (!memory.TryTranslateGuest(addr, left, out byte* host, out ulong piece)) return ChainError.BadAddress;
            if (buffers.Count < buffers.Capacity)
            {
                buffers.Segments[buffers.Count++] = new IoVec(host, (nuint)piece);
                if (!writable) buffers.ReadableCount++;
            }
            else
            {
                buffers.Overflowed = true;
            }
            if (writable)
            {
                buffers.WritableBytes += piece;
                buffers.LastWritableByte = host + piece - 1;
            }
            else
            {
                buffers.ReadableBytes += piece;
            }
            addr += piece;
            left -= piece;
        }
        return ChainError.None;
    }
}
