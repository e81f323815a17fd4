using System.Runtime.InteropServices;

namespace BlkTarget.Storage.Tests.Conformance;

/// <summary>
/// Drives one channel of a backend the way a reactor does (submit, then poll the I/O context until the
/// completion arrives), with aligned native buffers so O_DIRECT backends take the zero-copy path.
/// </summary>
internal sealed unsafe class ChannelDriver : IBlockCompletionSink, IDisposable
{
    private readonly IoContext _io = new(64);
    private readonly Dictionary<ulong, BlockStatus> _done = [];
    private ulong _nextTag;

    public ChannelDriver(IBlockDevice device)
    {
        Device = device;
        Channel = device.OpenChannel(_io, this, 256);
    }

    public IBlockDevice Device { get; }
    public IBlockChannel Channel { get; }

    public void Complete(ulong tag, BlockStatus status) => _done[tag] = status;

    public void ChannelFaulted(Exception error) => throw new InvalidOperationException("the channel under test faulted", error);

    /// <summary>Runs one request without data buffers (flush, discard, write-zeroes) to completion.</summary>
    public BlockStatus Run(BlockOperation operation, ulong offset, ulong length, BlockRequestFlags flags = 0) =>
        RunWithBuffers(operation, offset, length, null, 0, flags);

    /// <summary>Runs one request to completion and returns its status.</summary>
    public BlockStatus RunWithBuffers(BlockOperation operation, ulong offset, ulong length, IoVec* iov, int iovCount, BlockRequestFlags flags = 0)
    {
        ulong tag = _nextTag++;
        Channel.Submit(new BlockRequest { Operation = operation, Offset = offset, Length = length, Iov = iov, IovCount = iovCount, Flags = flags, Tag = tag });
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (!_done.ContainsKey(tag))
        {
            _io.Poll();
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"{operation} at {offset} never completed");
        }
        var status = _done[tag];
        _done.Remove(tag);
        return status;
    }

    /// <summary>Reads or writes through one aligned buffer, optionally split into several iovecs.</summary>
    public BlockStatus Transfer(BlockOperation operation, ulong offset, Span<byte> data, int pieces = 1, nuint misalign = 0)
    {
        nuint size = (nuint)data.Length + misalign;
        byte* buffer = (byte*)NativeMemory.AlignedAlloc(size == 0 ? 1 : size, 4096);
        try
        {
            byte* start = buffer + misalign;
            if (operation == BlockOperation.Write) data.CopyTo(new Span<byte>(start, data.Length));
            var iov = stackalloc IoVec[Math.Max(1, pieces)];
            int pieceLength = data.Length / pieces;
            for (int i = 0; i < pieces; i++)
                iov[i] = new IoVec(start + i * pieceLength, (nuint)(i == pieces - 1 ? data.Length - i * pieceLength : pieceLength));
            var status = RunWithBuffers(operation, offset, (ulong)data.Length, iov, pieces);
            if (operation == BlockOperation.Read) new Span<byte>(start, data.Length).CopyTo(data);
            return status;
        }
        finally
        {
            NativeMemory.AlignedFree(buffer);
        }
    }

    public void Dispose()
    {
        Channel.Dispose();
        _io.Dispose();
    }
}
