using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;
using BlkTarget.Storage.Interop;
using Xunit;

namespace BlkTarget.Storage.Tests;

/// <summary>The demote hint: the machine code of its stub is CLDEMOTE as the Intel SDM encodes it, the stub is there
/// exactly when the CPU reports the instruction, and running it on data changes nothing (it returns, and every byte is
/// as it was).</summary>
public sealed unsafe class CacheLinesTests
{
    [Fact]
    public void The_demote_stub_is_cldemote_of_the_first_argument_then_ret()
    {
        // CLDEMOTE m8 = 0F 1C /0; ModRM 0x07: mod 00, reg 000, rm 111 = [rdi], the first System V argument. RET = C3.
        Assert.Equal(new byte[] { 0x0F, 0x1C, 0x07, 0xC3 }, CacheLines.DemoteStubCode.ToArray());
    }

    [Fact]
    public void Demote_is_available_exactly_when_the_cpu_reports_cldemote()
    {
        // CPUID.(EAX=07H, ECX=0):ECX[bit 25] = CLDEMOTE (Intel SDM vol. 2A, CPUID).
        bool reported = RuntimeInformation.ProcessArchitecture == Architecture.X64 && X86Base.IsSupported
            && (X86Base.CpuId(7, 0).Ecx & (1 << 25)) != 0;
        Assert.Equal(reported, CacheLines.CanDemote);
    }

    [Fact]
    public void Demoting_lines_leaves_their_bytes_as_they_were()
    {
        byte* data = (byte*)NativeMemory.AlignedAlloc(4096, 64);
        try
        {
            for (int i = 0; i < 4096; i++) data[i] = (byte)(i * 7 + 3);
            for (int i = 0; i < 4096; i += 17) CacheLines.Demote(data + i);
            for (int i = 0; i < 4096; i++) Assert.Equal((byte)(i * 7 + 3), data[i]);
        }
        finally
        {
            NativeMemory.AlignedFree(data);
        }
    }

    [Fact]
    public void A_code_page_runs_what_was_put_in_it()
    {
        // mov eax, 42 (B8 2A 00 00 00); ret (C3)
        using var page = MappedMemory.MapCode([0xB8, 0x2A, 0x00, 0x00, 0x00, 0xC3]);
        if (RuntimeInformation.ProcessArchitecture != Architecture.X64) return;
        var function = (delegate* unmanaged<int>)page.Pointer;
        Assert.Equal(42, function());
    }

    [Fact]
    public void A_code_page_takes_one_to_4096_bytes()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => MappedMemory.MapCode([]));
        Assert.Throws<ArgumentOutOfRangeException>(() => MappedMemory.MapCode(new byte[4097]));
    }
}
