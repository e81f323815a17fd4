using System.Buffers.Binary;
using static BlkTarget.Storage.Compression.ZstdNative;

namespace BlkTarget.Storage.Compression;

/// <summary>
/// A read-only stream that decompresses zstd data from <paramref name="inner"/> (one or more concatenated
/// frames). Input that is not zstd, is corrupt, or ends inside a frame throws <see cref="ZstdException"/>;
/// Read returns 0 only after a complete frame at the end of the input.
/// </summary>
public sealed unsafe class ZstdDecompressStream : Stream
{
    private const uint FrameMagic = 0xFD2FB528, SkippableMagicMask = 0xFFFFFFF0, SkippableMagic = 0x184D2A50;

    private readonly Stream _inner;
    private readonly bool _leaveOpen;
    private readonly ZstdDecompressContext _context;
    private readonly byte[] _input;
    private int _inputPos, _inputLength;
    private bool _inputEnded, _started;
    /// <summary>ZSTD_decompressStream's last answer: 0 when a frame just ended (and was fully flushed).</summary>
    private nuint _lastResult = 1;

    public ZstdDecompressStream(Stream inner, bool leaveOpen = false)
    {
        _inner = inner;
        _leaveOpen = leaveOpen;
        _context = ZstdDecompressContext.Create();
        _input = new byte[(int)Math.Clamp(DStreamInSize(), 4096, 1 << 20)];
    }

    /// <summary>Compressed bytes consumed from the inner stream so far.</summary>
    public long CompressedBytes { get; private set; }

    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer)
    {
        ObjectDisposedException.ThrowIf(_context.IsClosed, this);
        if (buffer.IsEmpty) return 0;
        if (!_started) Start();
        fixed (byte* dst = buffer)
        fixed (byte* src = _input)
        {
            while (true)
            {
                if (_inputPos == _inputLength && !_inputEnded) Refill();
                var output = new OutBuffer { Dst = dst, Size = (nuint)buffer.Length };
                var input = new InBuffer { Src = src + _inputPos, Size = (nuint)(_inputLength - _inputPos) };
                bool atEnd = _inputEnded && input.Size == 0;
                if (atEnd && _lastResult == 0) return 0;   // every frame complete, nothing left
                nuint result = DecompressStream(_context, &output, &input);
                if (IsError(result) != 0) throw new ZstdException($"corrupt zstd data: {ErrorName(result)}");
                _inputPos += (int)input.Pos;
                CompressedBytes += (long)input.Pos;
                _lastResult = result;
                if (output.Pos > 0) return (int)output.Pos;
                if (atEnd) throw new ZstdException("the zstd stream is truncated (it ends inside a frame)");
            }
        }
    }

    /// <summary>Reads the first bytes and refuses input that does not start like zstd.</summary>
    private void Start()
    {
        _started = true;
        while (_inputLength < 4 && !_inputEnded)
        {
            int n = _inner.Read(_input, _inputLength, _input.Length - _inputLength);
            if (n == 0) _inputEnded = true;
            _inputLength += n;
        }
        if (_inputLength == 0) throw new ZstdException("the input is empty, not a zstd stream");
        uint magic = _inputLength >= 4 ? BinaryPrimitives.ReadUInt32LittleEndian(_input) : 0;
        if (magic != FrameMagic && (magic & SkippableMagicMask) != SkippableMagic)
            throw new ZstdException("not zstd-compressed data (wrong magic)");
    }

    private void Refill()
    {
        _inputPos = 0;
        _inputLength = _inner.Read(_input, 0, _input.Length);
        if (_inputLength == 0) _inputEnded = true;
    }

    public override void Flush() { }
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
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
