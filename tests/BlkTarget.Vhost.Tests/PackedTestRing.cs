using BlkTarget.Storage;
using BlkTarget.Vhost.Queues;

namespace BlkTarget.Vhost.Tests;

/// <summary>A packed ring in <see cref="TestMemory"/> with the test acting as the guest driver: descriptor ring,
/// driver and device event suppression areas, a data area.</summary>
internal sealed unsafe class PackedTestRing : IDisposable
{
    public const ulong Base = 0x1_0000_0000;
    public const ulong RingGpa = Base;
    public const ulong DriverAreaGpa = Base + 0x8_0000;
    public const ulong DeviceAreaGpa = Base + 0x8_0040;
    public const ulong DataGpa = Base + 0x10_0000;
    public readonly TestMemory Memory = new();
    public readonly uint Size;
    public ushort AvailIdx;
    public bool AvailWrap = true;
    private ulong _dataNext = DataGpa;
    private readonly IoVec[] _segments = new IoVec[64];

    public PackedTestRing(uint size = 8)
    {
        Size = size;
        Memory.AddRegion(Base, 0x100_0000);
    }

    public static ulong UserAddr(ulong gpa) => gpa + 0x7f00_0000_0000;

    public PackedRing CreateRing(bool eventIdx = false, uint vringBase = 0x8000_8000) =>
        PackedRing.Create(Memory.Memory, UserAddr(RingGpa), UserAddr(DriverAreaGpa), UserAddr(DeviceAreaGpa), Size, vringBase, eventIdx)!;

    public PackedDescriptor* Ring => (PackedDescriptor*)Memory.At(RingGpa);
    public ushort* DriverOffWrap => (ushort*)Memory.At(DriverAreaGpa);
    public ushort* DriverFlags => (ushort*)Memory.At(DriverAreaGpa + 2);
    public ushort* DeviceOffWrap => (ushort*)Memory.At(DeviceAreaGpa);
    public ushort* DeviceFlags => (ushort*)Memory.At(DeviceAreaGpa + 2);

    public ulong Allocate(uint length)
    {
        ulong gpa = _dataNext;
        _dataNext += (length + 15) & ~15u;
        return gpa;
    }

    /// <summary>Makes a chain of <paramref name="count"/> 16-byte buffers (the last writable) available with buffer
    /// <paramref name="id"/>, as a driver does: head flags last.</summary>
    public void Add(ushort id, int count = 1, ushort extraHeadFlags = 0)
    {
        var chain = new PackedDescriptor[count];
        for (int i = 0; i < count; i++)
            chain[i] = new PackedDescriptor
            {
                Addr = Allocate(16), Len = 16, Id = id,
                Flags = (ushort)((i == count - 1 ? PackedRingLayout.FlagWrite : PackedRingLayout.FlagNext) | (i == 0 ? extraHeadFlags : 0)),
            };
        AddRaw(chain);
    }

    /// <summary>Writes <paramref name="chain"/> as given into consecutive slots with the AVAIL/USED bits of the current
    /// wrap; the head's flags last.</summary>
    public void AddRaw(ReadOnlySpan<PackedDescriptor> chain)
    {
        ushort headSlot = AvailIdx;
        ushort headFlags = 0;
        for (int i = 0; i < chain.Length; i++)
        {
            var d = chain[i];
            ushort flags = (ushort)(d.Flags | (AvailWrap ? PackedRingLayout.FlagAvail : PackedRingLayout.FlagUsed));
            Ring[AvailIdx] = d with { Flags = i == 0 ? (ushort)0xffff : flags };
            if (i == 0)
            {
                // Not yet available in either wrap: AVAIL and USED both set only match wrap 1 used, never "available".
                Ring[AvailIdx].Flags = AvailWrap ? (ushort)0 : (ushort)(PackedRingLayout.FlagAvail | PackedRingLayout.FlagUsed);
                headFlags = flags;
            }
            if (++AvailIdx == Size)
            {
                AvailIdx = 0;
                AvailWrap = !AvailWrap;
            }
        }
        Volatile.Write(ref Ring[headSlot].Flags, headFlags);
    }

    public PopStatus Pop(PackedRing ring, out ushort id, out string? error) => Pop(ring, out id, out error, out _);

    public PopStatus Pop(PackedRing ring, out ushort id, out string? error, out ChainBuffers buffers)
    {
        fixed (IoVec* segments = _segments)
        {
            buffers = new ChainBuffers(segments, _segments.Length);
            return ring.TryPopChain(Memory.Memory, ref buffers, out id, out error);
        }
    }

    public void Dispose() => Memory.Dispose();
}
