using System.Runtime.InteropServices;
using BlkTarget.Storage.Ram;
using Xunit;

namespace BlkTarget.Storage.Tests;

/// <summary>The copies in and out of RAM disks: every byte of the range copied, nothing around it touched, for
/// every alignment of either end (into the disk, the line-aligned middle takes streaming stores, the ends ordinary
/// ones; out of it, 256-byte rounds and an ordinary copy of the rest).</summary>
public sealed unsafe class RamCopyTests
{
    [Theory]
    [InlineData(0, 0, 4096)]
    [InlineData(0, 1, 4096)]
    [InlineData(512, 3, 4096)]
    [InlineData(7, 0, 4096)]
    [InlineData(63, 17, 5000)]
    [InlineData(64, 64, 2048)]
    [InlineData(100, 9, 2049)]
    [InlineData(0, 0, 2047)]
    [InlineData(1, 2, 100)]
    [InlineData(0, 0, 131072)]
    [InlineData(33, 5, 131071)]
    public void Copies_into_the_disk_every_byte_and_nothing_else(int destinationOffset, int sourceOffset, int length) =>
        Check(destinationOffset, sourceOffset, length, into: true);

    [Theory]
    [InlineData(0, 0, 4096)]
    [InlineData(0, 1, 4096)]
    [InlineData(7, 0, 4096)]
    [InlineData(63, 17, 5000)]
    [InlineData(0, 0, 256)]
    [InlineData(1, 2, 255)]
    [InlineData(3, 0, 257)]
    [InlineData(0, 0, 131072)]
    [InlineData(33, 5, 131071)]
    public void Copies_out_of_the_disk_every_byte_and_nothing_else(int destinationOffset, int sourceOffset, int length) =>
        Check(destinationOffset, sourceOffset, length, into: false);

    private static void Check(int destinationOffset, int sourceOffset, int length, bool into)
    {
        const int Guard = 256;
        int size = length + destinationOffset + 2 * Guard;
        byte* destination = (byte*)NativeMemory.AlignedAlloc((nuint)size, 4096);
        byte* source = (byte*)NativeMemory.AlignedAlloc((nuint)(length + sourceOffset), 4096);
        try
        {
            var d = new Span<byte>(destination, size);
            d.Fill(0xEE);
            var s = new Span<byte>(source + sourceOffset, length);
            for (int i = 0; i < length; i++) s[i] = (byte)(i * 7 + 1);

            if (into)
            {
                bool streamed = RamCopy.Into(destination + Guard + destinationOffset, source + sourceOffset, (nuint)length);
                RamCopy.Fence();
                Assert.Equal(length >= 2048 && System.Runtime.Intrinsics.X86.Avx.IsSupported, streamed);
            }
            else RamCopy.OutOf(destination + Guard + destinationOffset, source + sourceOffset, (nuint)length);

            Assert.True(d.Slice(Guard + destinationOffset, length).SequenceEqual(s));
            Assert.True(d[..(Guard + destinationOffset)].IndexOfAnyExcept((byte)0xEE) < 0, "bytes before the range changed");
            Assert.True(d[(Guard + destinationOffset + length)..].IndexOfAnyExcept((byte)0xEE) < 0, "bytes after the range changed");
        }
        finally
        {
            NativeMemory.AlignedFree(destination);
            NativeMemory.AlignedFree(source);
        }
    }
}
