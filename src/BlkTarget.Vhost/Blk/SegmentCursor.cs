using BlkTarget.Storage;

namespace BlkTarget.Vhost.Blk;

/// <summary>
/// Consumes bytes from the front of a run of iovecs in place (the iovecs are our own copies, never guest
/// memory). Used to peel the request header off the data buffers and to read range segments.
/// </summary>
internal unsafe struct SegmentCursor(IoVec* segments, int start, int end)
{
    public int Index = start;
    public readonly int End = end;

    /// <summary>Copies up to destination.Length bytes and advances; returns how many were copied.</summary>
    public int CopyTo(Span<byte> destination)
    {
        int copied = 0;
        while (copied < destination.Length && Index < End)
        {
            ref IoVec v = ref segments[Index];
            int n = (int)Math.Min((nuint)(destination.Length - copied), v.Length);
            new ReadOnlySpan<byte>(v.Base, n).CopyTo(destination[copied..]);
            copied += n;
            v.Base += n;
            v.Length -= (nuint)n;
            if (v.Length == 0) Index++;
        }
        return copied;
    }

    /// <summary>Copies source into the buffers and advances; returns how many bytes fit.</summary>
    public int CopyFrom(ReadOnlySpan<byte> source)
    {
        int copied = 0;
        while (copied < source.Length && Index < End)
        {
            ref IoVec v = ref segments[Index];
            int n = (int)Math.Min((nuint)(source.Length - copied), v.Length);
            source.Slice(copied, n).CopyTo(new Span<byte>(v.Base, n));
            copied += n;
            v.Base += n;
            v.Length -= (nuint)n;
            if (v.Length == 0) Index++;
        }
        return copied;
    }

    /// <summary>Skips buffers already emptied, so <see cref="Index"/> points at the first one with data.</summary>
    public void SkipEmpty()
    {
        while (Index < End && segments[Index].Length == 0) Index++;
    }
}
