using BlkTarget.Storage.RawFile;
using BlkTarget.Storage.Tests.Conformance;
using BlkTarget.Storage.Tests.Image;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlkTarget.Storage.Tests.RawFile;

/// <summary>
/// A loop device over a sparse file in <c>directory</c>, exported with <c>file:</c> (O_DIRECT) and driven through one
/// channel: what a block-device test needs, torn down in order on dispose (channel, disk, then the loop device is
/// detached) even when a step failed. <see cref="Pattern"/> is what <see cref="Fill"/> writes over the first 4 MiB.
/// </summary>
internal sealed class ExportedLoop : IDisposable
{
    public const long DeviceSize = 16 << 20;
    public const int Span = 1 << 20;
    private const int Spans = 4;

    /// <param name="prepare">Runs on the attached device before it is opened (e.g. to lower a sysfs limit).</param>
    public ExportedLoop(string directory, Action<LoopDevice>? prepare = null, uint blockSize = 512)
    {
        Loop = LoopDevice.Create(directory, DeviceSize);
        try
        {
            prepare?.Invoke(Loop);
            Disk = FileDisk.Open(new FileDiskOptions { Path = Loop.Device, BlockSize = blockSize }, NullLogger.Instance);
            Driver = new ChannelDriver(Disk);
        }
        catch
        {
            Disk?.Dispose();
            Loop.Dispose();
            throw;
        }
    }

    public LoopDevice Loop { get; }
    public FileDisk Disk { get; }
    public ChannelDriver Driver { get; }
    public byte[] Pattern { get; } = Enumerable.Range(0, Spans * Span).Select(i => (byte)(i * 7 + 3 + (i >> 9))).ToArray();

    /// <summary>Bytes the backing file occupies.</summary>
    public ulong Allocated => ImageTestFiles.DiskUsage(Loop.BackingFile);

    /// <summary>Runs a data-less request (flush, discard, write-zeroes) to completion.</summary>
    public BlockStatus Run(BlockOperation operation, ulong offset = 0, ulong length = 0, BlockRequestFlags flags = 0) =>
        Driver.Run(operation, offset, length, flags);

    /// <summary>Writes <see cref="Pattern"/> over the first 4 MiB and makes it durable (the backing file's blocks allocated).</summary>
    public void Fill()
    {
        for (int i = 0; i < Spans; i++)
            Assert.Equal(BlockStatus.Ok, Driver.Transfer(BlockOperation.Write, (ulong)(i * Span), Pattern.AsSpan(i * Span, Span)));
        Assert.Equal(BlockStatus.Ok, Run(BlockOperation.Flush));
    }

    /// <summary>Asserts the first 4 MiB read back as <see cref="Pattern"/> except the <paramref name="zeroed"/> ranges,
    /// which read as zeros.</summary>
    public void AssertContents(params (int Offset, int Length)[] zeroed)
    {
        var actual = new byte[Spans * Span];
        for (int i = 0; i < Spans; i++)
            Assert.Equal(BlockStatus.Ok, Driver.Transfer(BlockOperation.Read, (ulong)(i * Span), actual.AsSpan(i * Span, Span)));
        var expected = (byte[])Pattern.Clone();
        foreach (var (offset, length) in zeroed) expected.AsSpan(offset, length).Clear();
        int same = expected.AsSpan().CommonPrefixLength(actual);
        Assert.True(same == expected.Length, $"byte {same} reads {actual[Math.Min(same, actual.Length - 1)]:x2}, expected {expected[Math.Min(same, expected.Length - 1)]:x2}");
    }

    public void Dispose()
    {
        try
        {
            Driver.Dispose();
            Disk.Dispose();
        }
        finally
        {
            Loop.Dispose();
        }
    }
}
