using BlkTarget.Storage;
using BlkTarget.Storage.Interop;
using BlkTarget.Vhost.Memory;
using BlkTarget.Vhost.Queues;

namespace BlkTarget.Vhost.Device;

/// <summary>
/// The device-writable buffers of each request in flight on one queue, as the chain gave them, kept while dirty
/// logging (VHOST_F_LOG_ALL) is on so that completion can mark every page the request may have written: data-in,
/// status byte, SCSI response and sense. Device models trim and advance their own copies of the segments while they
/// work; this copy stays as walked. Slots are indexed by head (unique while in flight) and allocated once per queue
/// start: an anonymous mapping of one slot's worth of segments per head, committed only where chains reach.
/// <para>Marks whole writable buffers: a buffer the device filled only partly (a short SCSI data-in) is marked whole,
/// which costs the migration a page copy and never loses a write. Reactor thread only.</para>
/// </summary>
internal sealed unsafe class WrittenBuffers : IDisposable
{
    private readonly MappedMemory _buffer;
    private readonly IoVec* _segments;
    private readonly int _segmentsPerSlot;
    private readonly int[] _counts;
    private readonly nint[] _lastBytes;

    /// <param name="slots">Queue size: heads are below it.</param>
    /// <param name="segmentsPerSlot">The most segments a walked chain stores (its capacity).</param>
    public WrittenBuffers(uint slots, int segmentsPerSlot)
    {
        _segmentsPerSlot = segmentsPerSlot;
        _buffer = MappedMemory.MapAnonymous((ulong)slots * (ulong)segmentsPerSlot * (ulong)sizeof(IoVec));
        _segments = (IoVec*)_buffer.Pointer;
        _counts = new int[slots];
        _lastBytes = new nint[slots];
    }

    /// <summary>Keeps the writable segments of <paramref name="chain"/> (read from <paramref name="walked"/>, where the
    /// walker put them) for request <paramref name="head"/>, plus its last writable byte, which the walker remembers
    /// even when the chain had more segments than it stores.</summary>
    public void Record(ushort head, ref ChainBuffers chain, IoVec* walked)
    {
        int count = chain.Count - chain.ReadableCount;
        Buffer.MemoryCopy(walked + chain.ReadableCount, _segments + head * _segmentsPerSlot, (long)_segmentsPerSlot * sizeof(IoVec), (long)count * sizeof(IoVec));
        _counts[head] = count;
        _lastBytes[head] = (nint)chain.LastWritableByte;
    }

    /// <summary>Marks the pages of request <paramref name="head"/>'s writable buffers in <paramref name="log"/>.</summary>
    public void Mark(ushort head, DirtyLog log, GuestMemory memory)
    {
        IoVec* segments = _segments + head * _segmentsPerSlot;
        for (int i = 0; i < _counts[head]; i++) log.MarkHost(memory, segments[i].Base, segments[i].Length);
        if (_lastBytes[head] != 0) log.MarkHost(memory, (byte*)_lastBytes[head], 1);
    }

    public void Dispose() => _buffer.Dispose();
}
