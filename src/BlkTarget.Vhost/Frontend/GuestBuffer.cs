namespace BlkTarget.Vhost.Frontend;

/// <summary>
/// A range of the frontend's "guest RAM": where it lives in this process and its guest-physical address,
/// which is what descriptors carry. A plain value; the arena it came from owns the memory.
/// </summary>
public readonly unsafe struct GuestBuffer
{
    public GuestBuffer(byte* pointer, ulong guestPhysAddr, uint length)
    {
        Pointer = pointer;
        Gpa = guestPhysAddr;
        Length = length;
    }

    /// <summary>Where the buffer lives in this process (also its frontend-virtual address).</summary>
    public byte* Pointer { get; }

    /// <summary>Guest-physical address: what goes into a descriptor.</summary>
    public ulong Gpa { get; }

    public uint Length { get; }

    /// <summary>Frontend-virtual address (what SET_VRING_ADDR carries): the pointer itself, as in QEMU.</summary>
    public ulong UserAddr => (ulong)Pointer;

    public Span<byte> Span => new(Pointer, checked((int)Length));

    public GuestBuffer Slice(uint offset, uint length)
    {
        if (offset > Length || length > Length - offset) throw new ArgumentOutOfRangeException(nameof(length));
        return new GuestBuffer(Pointer + offset, Gpa + offset, length);
    }

    public GuestBuffer Slice(uint offset) => Slice(offset, Length - offset);

    /// <summary>This buffer as a descriptor the device reads from.</summary>
    public VirtqBuffer Readable => new(Gpa, Length, Writable: false);

    /// <summary>This buffer as a descriptor the device writes to.</summary>
    public VirtqBuffer Writable => new(Gpa, Length, Writable: true);

    public override string ToString() => $"gpa 0x{Gpa:x} len {Length}";
}

/// <summary>One buffer of a descriptor chain as the driver describes it: guest-physical address, length,
/// direction. The virtqueue turns a run of these into descriptors.</summary>
public readonly record struct VirtqBuffer(ulong Gpa, uint Length, bool Writable);
