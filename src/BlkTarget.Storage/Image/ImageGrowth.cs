using System.Runtime.InteropServices;

namespace BlkTarget.Storage.Image;

/// <summary>
/// One growth of an image's virtual size, as a sequence: <see cref="Begin"/> claims the physical clusters the larger
/// map will cover and lists the virtual clusters living there; <see cref="NextBatch"/> / <see cref="RelocateBatch"/>
/// move them out a batch at a time (a served image keeps requests off a batch's virtual clusters with range locks
/// meanwhile); <see cref="Commit"/> zeroes the new map area and writes the new header. The image's metadata worker
/// drives it between other jobs while the image is served; <see cref="Run"/> drives it alone (`image resize`).
/// </summary>
public sealed unsafe class ImageGrowth : IDisposable
{
    /// <summary>Virtual clusters one batch moves at most, so the I/O waiting on them waits for a few clusters' copy.</summary>
    public const int MaxClustersPerBatch = 64;

    private readonly ImageFile _image;
    private readonly List<(ulong Virtual, ulong Physical)> _moves;
    private readonly List<(ulong Virtual, ulong Physical)> _batch = [];
    private byte* _buffer;
    private int _next;

    private ImageGrowth(ImageFile image, ImageHeader grown, List<(ulong, ulong)> moves)
    {
        _image = image;
        Grown = grown;
        _moves = moves;
        _buffer = (byte*)NativeMemory.AlignedAlloc((nuint)image.ClusterSize, ImageFile.MapBlockSize);
    }

    /// <summary>The layout after the growth.</summary>
    public ImageHeader Grown { get; }

    /// <summary>Clusters moved so far.</summary>
    public int Moved { get; private set; }

    /// <summary>Clusters the growth has to move (some may be deallocated before their turn).</summary>
    public int ToMove => _moves.Count;

    /// <summary>Whether clusters remain to be moved before <see cref="Commit"/>.</summary>
    public bool HasMoves => _next < _moves.Count;

    /// <summary>The layout of <paramref name="image"/> grown to <paramref name="newVirtualSize"/> bytes.</summary>
    /// <exception cref="ArgumentException">not larger, not a multiple of 512, too large, or a map beyond what
    /// this build loads (the message suggests a larger cluster size).</exception>
    public static ImageHeader Layout(ImageHeader current, ulong newVirtualSize)
    {
        if (newVirtualSize <= current.VirtualSize)
            throw new ArgumentException($"images only grow: {newVirtualSize} bytes is not more than the current {current.VirtualSize}");
        ImageHeader grown;
        try
        {
            grown = ImageHeader.ForNewImage(newVirtualSize, current.ClusterSize);
        }
        catch (ImageFormatException e)
        {
            throw new ArgumentException(e.Message);
        }
        if (grown.MapBytes > ImageFile.MaxMapBytes)
            throw new ArgumentException($"{newVirtualSize} bytes need an allocation map of {grown.MapBytes} bytes ({grown.MapEntries} clusters of {current.ClusterSize} bytes), more than the {ImageFile.MaxMapBytes} this build supports; use a larger cluster size ('blktarget image convert SRC DST --cluster-size 2M')");
        return grown;
    }

    /// <summary>Starts growing <paramref name="image"/> (metadata thread): claims the new map area.</summary>
    public static ImageGrowth Begin(ImageFile image, ulong newVirtualSize)
    {
        if (image.ReadOnly) throw new ArgumentException($"{image.Path} is open read-only");
        var grown = Layout(image.Header, newVirtualSize);
        return new ImageGrowth(image, grown, image.ReserveMapArea(grown));
    }

    /// <summary>
    /// Picks the next batch and returns its virtual cluster runs ([First, Last], consecutive clusters merged), at
    /// most <paramref name="maxRuns"/>: the ranges to lock before <see cref="RelocateBatch"/>.
    /// </summary>
    public List<(ulong First, ulong Last)> NextBatch(int maxRuns)
    {
        _batch.Clear();
        var runs = new List<(ulong First, ulong Last)>();
        while (_next < _moves.Count && _batch.Count < MaxClustersPerBatch)
        {
            var move = _moves[_next];
            if (runs.Count > 0 && runs[^1].Last + 1 == move.Virtual) runs[^1] = (runs[^1].First, move.Virtual);
            else if (runs.Count == maxRuns) break;
            else runs.Add((move.Virtual, move.Virtual));
            _batch.Add(move);
            _next++;
        }
        return runs;
    }

    /// <summary>Moves the batch <see cref="NextBatch"/> picked; nothing may read or write its clusters meanwhile.</summary>
    public void RelocateBatch()
    {
        Moved += _image.RelocateClusters(_batch, _buffer);
        _batch.Clear();
    }

    /// <summary>Writes the new layout (every batch moved); afterwards the image has its new size.</summary>
    public void Commit()
    {
        if (HasMoves || _batch.Count > 0) throw new InvalidOperationException("clusters remain to be moved");
        _image.CommitGrowth(Grown);
    }

    /// <summary>Grows an image nobody else uses (the one thread that opened it): every batch, then the commit.
    /// Returns how many clusters moved.</summary>
    public static int Run(ImageFile image, ulong newVirtualSize)
    {
        using var growth = Begin(image, newVirtualSize);
        while (growth.HasMoves)
        {
            growth.NextBatch(int.MaxValue);
            growth.RelocateBatch();
        }
        growth.Commit();
        return growth.Moved;
    }

    public void Dispose()
    {
        if (_buffer == null) return;
        NativeMemory.AlignedFree(_buffer);
        _buffer = null;
    }
}
