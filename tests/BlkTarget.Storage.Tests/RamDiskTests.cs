using BlkTarget.Storage;
using BlkTarget.Storage.Ram;

namespace BlkTarget.Storage.Tests;

public sealed unsafe class RamDiskTests : IDisposable
{
    private readonly IoContext Io = new();

    public void Dispose() => Io.Dispose();

    private sealed class Completions : IBlockCompletionSink
    {
        public readonly List<(ulong Tag, BlockStatus Status)> Seen = [];
        public void Complete(ulong tag, BlockStatus status) => Seen.Add((tag, status));
        public void ChannelFaulted(Exception error) => throw new InvalidOperationException("the channel under test faulted", error);
    }

    private static BlockStatus Do(IBlockChannel channel, Completions sink, BlockOperation op, ulong offset, byte[]? buffer, ulong length = 0, BlockRequestFlags flags = 0)
    {
        sink.Seen.Clear();
        fixed (byte* p = buffer)
        {
            var iov = new IoVec(p, (nuint)(buffer?.Length ?? 0));
            channel.Submit(new BlockRequest
            {
                Operation = op,
                Offset = offset,
                Length = buffer is null ? length : (ulong)buffer.Length,
                Iov = &iov,
                IovCount = buffer is null ? 0 : 1,
                Flags = flags,
                Tag = 42,
            });
        }
        Assert.Single(sink.Seen);
        Assert.Equal(42UL, sink.Seen[0].Tag);
        return sink.Seen[0].Status;
    }

    [Fact]
    public void Written_data_reads_back_and_fresh_space_reads_as_zero()
    {
        using var disk = new RamDisk(1 << 20);
        var sink = new Completions();
        using var channel = disk.OpenChannel(Io, sink, 8);
        var data = new byte[8192];
        new Random(5).NextBytes(data);
        Assert.Equal(BlockStatus.Ok, Do(channel, sink, BlockOperation.Write, 4096, data));
        var back = new byte[8192];
        Assert.Equal(BlockStatus.Ok, Do(channel, sink, BlockOperation.Read, 4096, back));
        Assert.Equal(data, back);
        var fresh = new byte[512];
        Assert.Equal(BlockStatus.Ok, Do(channel, sink, BlockOperation.Read, 1 << 19, fresh));
        Assert.Equal(new byte[512], fresh);
    }

    [Theory]
    [InlineData(RamDiskPages.Transparent)]
    [InlineData(RamDiskPages.Small)]
    public void A_grown_disk_keeps_its_data_and_serves_the_new_space(RamDiskPages pages)
    {
        using var disk = new RamDisk(4 << 20, pages: pages);
        var sink = new Completions();
        using var channel = disk.OpenChannel(Io, sink, 8);
        var data = Enumerable.Range(0, 4096).Select(i => (byte)(i * 7)).ToArray();
        Assert.Equal(BlockStatus.Ok, Do(channel, sink, BlockOperation.Write, (4 << 20) - 4096, data));
        Assert.Equal(BlockStatus.OutOfRange, Do(channel, sink, BlockOperation.Write, 4 << 20, data));

        disk.Resize(6 << 20);
        Assert.Equal(6UL << 20, disk.Info.SizeBytes);
        var back = new byte[4096];
        Assert.Equal(BlockStatus.Ok, Do(channel, sink, BlockOperation.Read, (4 << 20) - 4096, back));
        Assert.Equal(data, back);
        Assert.Equal(BlockStatus.Ok, Do(channel, sink, BlockOperation.Read, (6 << 20) - 4096, back));
        Assert.Equal(new byte[4096], back);                                   // new space reads as zeros
        Assert.Equal(BlockStatus.Ok, Do(channel, sink, BlockOperation.Write, (6 << 20) - 4096, data));
        Assert.Equal(BlockStatus.OutOfRange, Do(channel, sink, BlockOperation.Write, 6 << 20, data));
    }

    [Fact]
    public void Growth_is_refused_when_smaller_unaligned_or_past_the_reservation()
    {
        using var disk = new RamDisk(1 << 20);
        Assert.Equal(64UL << 20, disk.MaxSizeBytes);
        Assert.Throws<ArgumentException>(() => disk.Resize(1 << 20));
        Assert.Throws<ArgumentException>(() => disk.Resize((2 << 20) + 100));
        Assert.Throws<ArgumentException>(() => disk.Resize(65 << 20));
        disk.Resize(64 << 20);
        Assert.Equal(64UL << 20, disk.Info.SizeBytes);
        using var readOnly = new RamDisk(1 << 20, readOnly: true);
        Assert.Throws<ArgumentException>(() => readOnly.Resize(2 << 20));
    }

    [Fact]
    public void Sizes_above_two_gigabytes_work()
    {
        ulong size = 3UL << 30;
        using var disk = new RamDisk(size);
        var sink = new Completions();
        using var channel = disk.OpenChannel(Io, sink, 8);
        var data = Enumerable.Range(0, 4096).Select(i => (byte)i).ToArray();
        Assert.Equal(BlockStatus.Ok, Do(channel, sink, BlockOperation.Write, size - 4096, data));
        var back = new byte[4096];
        Assert.Equal(BlockStatus.Ok, Do(channel, sink, BlockOperation.Read, size - 4096, back));
        Assert.Equal(data, back);
        Assert.Equal(size, disk.Info.SizeBytes);
    }

    [Theory]
    [InlineData(BlockOperation.Discard)]
    [InlineData(BlockOperation.WriteZeroes)]
    public void Discard_and_write_zeroes_leave_zeros_including_partial_pages(BlockOperation op)
    {
        using var disk = new RamDisk(1 << 20);
        var sink = new Completions();
        using var channel = disk.OpenChannel(Io, sink, 8);
        var data = Enumerable.Repeat((byte)0xAA, 3 * 4096).ToArray();
        Do(channel, sink, BlockOperation.Write, 0, data);
        Assert.Equal(BlockStatus.Ok, Do(channel, sink, op, 512, null, 2 * 4096));
        var back = new byte[3 * 4096];
        Do(channel, sink, BlockOperation.Read, 0, back);
        Assert.All(back.AsSpan(0, 512).ToArray(), b => Assert.Equal(0xAA, b));
        Assert.All(back.AsSpan(512, 2 * 4096).ToArray(), b => Assert.Equal(0, b));
        Assert.All(back.AsSpan(512 + 2 * 4096).ToArray(), b => Assert.Equal(0xAA, b));
    }

    [Fact]
    public void Requests_past_the_end_or_unaligned_are_refused_without_touching_memory()
    {
        using var disk = new RamDisk(1 << 20, 4096);
        var sink = new Completions();
        using var channel = disk.OpenChannel(Io, sink, 8);
        Assert.Equal(BlockStatus.OutOfRange, Do(channel, sink, BlockOperation.Write, (1 << 20) - 4096, new byte[8192]));
        Assert.Equal(BlockStatus.OutOfRange, Do(channel, sink, BlockOperation.Read, ulong.MaxValue - 4095, new byte[4096]));
        Assert.Equal(BlockStatus.OutOfRange, Do(channel, sink, BlockOperation.Read, 512, new byte[4096]));
        Assert.Equal(BlockStatus.OutOfRange, Do(channel, sink, BlockOperation.Discard, 0, null, 100));
    }

    [Fact]
    public void Read_only_disk_refuses_modifications()
    {
        using var disk = new RamDisk(1 << 20, readOnly: true);
        var sink = new Completions();
        using var channel = disk.OpenChannel(Io, sink, 8);
        Assert.Equal(BlockStatus.ReadOnly, Do(channel, sink, BlockOperation.Write, 0, new byte[512]));
        Assert.Equal(BlockStatus.ReadOnly, Do(channel, sink, BlockOperation.Discard, 0, null, 512));
        Assert.Equal(BlockStatus.ReadOnly, Do(channel, sink, BlockOperation.WriteZeroes, 0, null, 512));
        Assert.Equal(BlockStatus.Ok, Do(channel, sink, BlockOperation.Read, 0, new byte[512]));
        Assert.Equal(BlockStatus.Ok, Do(channel, sink, BlockOperation.Flush, 0, null));
    }

    [Fact]
    public void Iovec_total_that_disagrees_with_length_is_an_io_error()
    {
        using var disk = new RamDisk(1 << 20);
        var sink = new Completions();
        using var channel = disk.OpenChannel(Io, sink, 8);
        var buffer = new byte[512];
        fixed (byte* p = buffer)
        {
            var iov = new IoVec(p, 512);
            channel.Submit(new BlockRequest { Operation = BlockOperation.Write, Offset = 0, Length = 1024, Iov = &iov, IovCount = 1, Tag = 1 });
        }
        Assert.Equal(BlockStatus.IoError, sink.Seen.Single().Status);
    }

    [Theory]
    [InlineData(0UL, 512u)]
    [InlineData(1000UL, 512u)]
    [InlineData(1UL << 20, 1024u)]
    public void Invalid_geometry_is_refused(ulong size, uint blockSize)
    {
        Assert.Throws<ArgumentException>(() => new RamDisk(size, blockSize));
    }
}
