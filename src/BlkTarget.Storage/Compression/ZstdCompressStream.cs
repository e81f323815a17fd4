using static BlkTarget.Storage.Compression.ZstdNative;

namespace BlkTarget.Storage.Compression;

/// <summary>
/// A write-only stream that zstd-compresses everything written to it into one frame on
/// <paramref name="inner"/> (with zstd's own content checksum). <see cref="Finish"/> ends the frame; disposing
/// without it leaves an unfinished frame behind (what a failed writer should leave: a reader calls it truncated).
/// </summary>
public sealed unsafe class ZstdCompressStream : Stream
{
    private readonly Stream _inner;
    private readonly bool _leaveOpen;
    private readonly ZstdCompressContext _context;
    private readonly byte[] _output;
    private bool _finished;

    /// <param name="level">zstd level, 1 (fast) to 19 (small); 3 is zstd's default.</param>
    /// <param name="workers">compression threads besides the caller (0: compress on the calling thread);
    /// ignored where libzstd was built without multithreading.</param>
    public ZstdCompressStream(Stream inner, int level = 3, int workers = 0, bool leaveOpen = false)
    {
        if (level is < 1 or > 19) throw new ArgumentOutOfRangeException(nameof(level), level, "zstd level must be between 1 and 19");
        _inner = inner;
        _leaveOpen = leaveOpen;
        _context = ZstdCompressContext.Create();
        try
        {
            Check(CCtxSetParameter(_context, CompressionLevel, level), "zstd level");
            Check(CCtxSetParameter(_context, ChecksumFlag, 1), "zstd checksum flag");
            if (workers > 0) CCtxSetParameter(_context, NbWorkers, workers);   // an error just means single-threaded
            _output = new byte[(int)Math.Min(CStreamOutSize(), 1 << 20)];
        }
        catch
        {
            _context.Dispose();
            throw;
        }
    }

    /// <summary>Compressed bytes written to the inner stream so far.</summary>
    public long CompressedBytes { get; private set; }

    public override bool CanRead => false;
    public override bool CanSeek => false;
    public override bool CanWrite => !_finished;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        ObjectDisposedException.ThrowIf(_context.IsClosed, this);
        if (_finished) throw new InvalidOperationException("the zstd frame is already finished");
        fixed (byte* src = buffer)
        {
            var input = new InBuffer { Src = src, Size = (nuint)buffer.Length };
            while (input.Pos < input.Size) Pump(&input, EndContinue);
        }
    }

    /// <summary>Ends the frame: everything written reaches the inner stream, which is then flushed.</summary>
    public void Finish()
    {
        if (_finished) return;
        var input = new InBuffer();
        while (Pump(&input, EndFrame) != 0) { }
        _finished = true;
        _inner.Flush();
    }

    /// <summary>One ZSTD_compressStream2 call; writes what it produced. Returns zstd's "bytes left to flush".</summary>
    private nuint Pump(InBuffer* input, int directive)
    {
        fixed (byte* dst = _output)
        {
            var output = new OutBuffer { Dst = dst, Size = (nuint)_output.Length };
            nuint remaining = Check(CompressStream2(_context, &output, input, directive), "zstd compression failed");
            if (output.Pos > 0)
            {
                _inner.Write(_output, 0, (int)output.Pos);
                CompressedBytes += (long)output.Pos;
            }
            return remaining;
        }
    }

    public override void Flush() { }
    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _context.Dispose();
            if (!_leaveOpen) _inner.Dispose();
        }
        base.Dispose(disposing);
    }
}
