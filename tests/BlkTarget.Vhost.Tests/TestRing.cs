using BlkTarget.Vhost.Queues;

namespace BlkTarget.Vhost.Tests;

/// <summary>
/// A split ring laid out in <see cref="TestMemory"/> the way a driver would: descriptor table, avail ring,
/// used ring, plus a data area. Lets tests act as the guest driver.
/// </summary>
internal sealed unsafe class TestRing : IDisposable
{
    public const ulong Base = 0x1_0000_0000;
    public const ulong DescGpa = Base;
    public const ulong DataGpa = Base + 0x10_0000;
    public readonly TestMemory Memory = new();
    public readonly uint Size;
    private readonly ulong _availGpa;
    private readonly ulong _usedGpa;
    private ushort _availIdx;
    private ulong _dataNext = DataGpa;

    public TestRing(uint size = 16, ulong memorySize = 0x100_0000)
    {
        Size = size;
        Memory.AddRegion(Base, memorySize);
        _availGpa = DescGpa + 16UL * size;
        _usedGpa = (_availGpa + 6 + 2UL * size + 3) & ~3UL;
    }

    public ulong UserAddr(ulong gpa) => gpa + 0x7f00_0000_0000;

    /// <summary>Guest-physical address of the used ring (what SET_VRING_ADDR's log_guest_addr would say).</summary>
    public ulong UsedGpa => _usedGpa;

    public SplitRing CreateRing(bool eventIdx = false, ushort lastAvail = 0) =>
        SplitRing.Create(Memory.Memory, UserAddr(DescGpa), UserAddr(_availGpa), UserAddr(_usedGpa), Size, lastAvail, eventIdx)!;

    public VirtqDescriptor* Table => (VirtqDescriptor*)Memory.At(DescGpa);

    public void SetDescriptor(int index, ulong addr, uint len, ushort flags = 0, ushort next = 0) =>
        Table[index] = new VirtqDescriptor { Addr = addr, Len = len, Flags = flags, Next = next };

    /// <summary>Allocates a data buffer in guest memory and returns its guest-physical address.</summary>
    public ulong Allocate(uint length, uint alignment = 16)
    {
        ulong gpa = (_dataNext + alignment - 1) & ~(ulong)(alignment - 1);
        _dataNext = gpa + length;
        return gpa;
    }

    /// <summary>Bytes of the data area handed out so far.</summary>
    public ulong DataUsed => _dataNext - DataGpa;

    /// <summary>Hands the data area out again from its start (only when no buffer allocated before is in use).</summary>
    public void RewindData() => _dataNext = DataGpa;

    public Span<byte> Bytes(ulong gpa, int length) => new(Memory.At(gpa), length);

    public void MakeAvailable(ushort head)
    {
        ((ushort*)Memory.At(_availGpa + 4))[_availIdx % Size] = head;
        _availIdx++;
        System.Threading.Volatile.Write(ref *(ushort*)Memory.At(_availGpa + 2), _availIdx);
    }

    public void SetAvailIdx(ushort idx) => *(ushort*)Memory.At(_availGpa + 2) = idx;
    public void SetAvailFlags(ushort flags) => *(ushort*)Memory.At(_availGpa) = flags;
    public void SetUsedEvent(ushort value) => *(ushort*)Memory.At(_availGpa + 4 + 2UL * Size) = value;
    public ushort UsedFlags => *(ushort*)Memory.At(_usedGpa);
    public ushort AvailEvent => *(ushort*)Memory.At(_usedGpa + 4 + 8UL * Size);
    public ushort UsedIdx => *(ushort*)Memory.At(_usedGpa + 2);
    public void SetUsedIdx(ushort idx) => *(ushort*)Memory.At(_usedGpa + 2) = idx;
    public VirtqUsedElement Used(int i) => ((VirtqUsedElement*)Memory.At(_usedGpa + 4))[i % Size];

    public void Dispose() => Memory.Dispose();
}
