using BlkTarget.Vhost.Memory;

namespace BlkTarget.Vhost.Queues;

/// <summary>
/// Turns the descriptors of one packed-ring chain, already copied out of the descriptor ring (or out of the inflight
/// area on resubmission), into <see cref="ChainBuffers"/> (virtio 1.2, 2.8.6 chaining, 2.8.7 indirect tables). An
/// indirect descriptor must be the chain's only descriptor (INDIRECT with NEXT is refused); its table holds
/// <c>len / 16</c> entries read in order, each copied before it is checked; only WRITE counts there, a nested
/// INDIRECT is refused.
/// </summary>
public static unsafe class PackedChainWalker
{
    public static ChainError Walk(GuestMemory memory, ReadOnlySpan<PackedDescriptor> chain, ref ChainBuffers buffers)
    {
        buffers.Clear();
        for (int i = 0; i < chain.Length; i++)
        {
            PackedDescriptor d = chain[i];
            if ((d.Flags & PackedRingLayout.FlagIndirect) != 0)
                return chain.Length != 1 ? ChainError.MisplacedIndirect : WalkIndirect(memory, d, ref buffers);
            var error = DescriptorChainWalker.AddDescriptor(memory, d.Addr, d.Len, (d.Flags & PackedRingLayout.FlagWrite) != 0, ref buffers);
            if (error != ChainError.None) return error;
        }
        return ChainError.None;
    }

    private static ChainError WalkIndirect(GuestMemory memory, PackedDescriptor indirect, ref ChainBuffers buffers)
    {
        if (indirect.Len == 0 || indirect.Len % 16 != 0 || indirect.Len / 16 > DescriptorChainWalker.MaxIndirectEntries)
            return ChainError.BadIndirectLength;
        var table = (PackedDescriptor*)memory.TranslateGuestRange(indirect.Addr, indirect.Len);
        if (table == null) return ChainError.BadAddress;
        uint count = indirect.Len / 16;
        for (uint i = 0; i < count; i++)
        {
            PackedDescriptor d = table[i];
            if ((d.Flags & PackedRingLayout.FlagIndirect) != 0) return ChainError.NestedIndirect;
            var error = DescriptorChainWalker.AddDescriptor(memory, d.Addr, d.Len, (d.Flags & PackedRingLayout.FlagWrite) != 0, ref buffers);
            if (error != ChainError.None) return error;
        }
        return ChainError.None;
    }
}
