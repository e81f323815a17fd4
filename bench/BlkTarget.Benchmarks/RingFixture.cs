using BlkTarget.Storage.Interop;
using BlkTarget.Vhost.Memory;
using BlkTarget.Vhost.Protocol;
using BlkTarget.Vhost.Queues;

namespace BlkTarget.Benchmarks;

/// <summary>
/// "Guest memory" in a memfd, mapped the way the vhost-user session maps it, with one split ring laid out the
/// way a driver lays it out (descriptor table, avail ring, used ring) and a data area. The benchmarks play the
/// guest driver on it.
/// </summary>
public sealed unsafe class RingFixture : IDisposable
{
    public const ulong Base = 0x1_0000_0000;
    private const ulong UserBase = 0x7f00_0000_0000;
    private readonly GuestRegion _region;
    private readonly ulong _availGpa;
    private readonly ulong _usedGpa;
    private ulong _dataNext;
    private ushort _availIdx;

    public RingFixture(uint size, ulong memoryBytes = 64UL << 20)
    {
        Size = size;
        using (var fd = MemFd.Create("bench-guest", (long)memoryBytes))
            _region = GuestRegion.Map(new MemoryRegionDescription(Base, memoryBytes, UserBase, 0), fd);
        Memory = new GuestMemory([_region]);
        _availGpa = Base + 16UL * size;
        _usedGpa = (_availGpa + 6 + 2UL * size + 4095) & ~4095UL;
        _dataNext = (_usedGpa + 6 + 8UL * size + 4095) & ~4095UL;
    }

    public uint Size { get; }
    public GuestMemory Memory { get; }
    public VirtqDescriptor* Table => (VirtqDescriptor*)At(Base);

    public byte* At(ulong gpa) => _region.Host + (gpa - Base);

    public SplitRing CreateRing(bool eventIdx = true) =>
        SplitRing.Create(Memory, UserBase, UserBase + (_availGpa - Base), UserBase + (_usedGpa - Base), Size, 0, eventIdx)!;

    /// <summary>Allocates guest memory; returns its guest-physical address.</summary>
    public ulong Allocate(uint length, uint alignment = 64)
    {
        ulong gpa = (_dataNext + alignment - 1) & ~(ulong)(alignment - 1);
        _dataNext = gpa + length;
        new Span<byte>(At(gpa), (int)length).Fill(0x5a);
        return gpa;
    }

    public void SetDescriptor(int index, ulong addr, uint len, ushort flags, ushort next = 0) =>
        Table[index] = new VirtqDescriptor { Addr = addr, Len = len, Flags = flags, Next = next };

    /// <summary>Puts a head into the avail ring without publishing it.</summary>
    public void Offer(ushort head)
    {
        ((ushort*)At(_availGpa + 4))[_availIdx & (Size - 1)] = head;
        _availIdx++;
    }

    /// <summary>Release store of avail->idx: the device sees every offered head.</summary>
    public void Publish() => Volatile.Write(ref *(ushort*)At(_availGpa + 2), _availIdx);

    public void Dispose() => _region.Dispose();
}
