using BlkTarget.Storage.Faults;

namespace BlkTarget.Storage.Tests.Conformance;

/// <summary>Error injection on every backend: chosen requests fail, nothing else is affected.</summary>
public sealed class FaultInjectionTests : IDisposable
{
    private readonly BackendFactory _factory = new();

    [Theory]
    [MemberData(nameof(BackendFactory.Kinds), MemberType = typeof(BackendFactory))]
    public void Chosen_requests_fail_and_the_device_keeps_serving_others(string kind)
    {
        using var disk = new FaultInjectingDisk(_factory.Create(kind), [
            new FaultRule(BlockStatus.IoError) { Operation = BlockOperation.Write, RangeStart = 1 << 20, RangeLength = 4096 },
            new FaultRule(BlockStatus.NoSpace) { Operation = BlockOperation.Flush, Count = 1 },
            new FaultRule(BlockStatus.IoError) { Operation = BlockOperation.Read, RangeStart = 2 << 20, RangeLength = 512, Count = 2 },
        ]);
        using var driver = new ChannelDriver(disk);
        var data = Enumerable.Range(0, 8192).Select(i => (byte)(i * 13)).ToArray();
        Assert.Equal(BlockStatus.IoError, driver.Transfer(BlockOperation.Write, (1 << 20) - 4096, data));   // overlaps the faulty range
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, 0, data));
        var back = new byte[8192];
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, (1 << 20) - 4096, back));
        Assert.All(back, b => Assert.Equal(0, b));                                                        // the failed write changed nothing
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, 0, back));
        Assert.Equal(data, back);
        Assert.Equal(BlockStatus.NoSpace, driver.Run(BlockOperation.Flush, 0, 0));
        Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.Flush, 0, 0));                             // Count = 1
        Assert.Equal(BlockStatus.IoError, driver.Transfer(BlockOperation.Read, 2 << 20, new byte[512]));
        Assert.Equal(BlockStatus.IoError, driver.Transfer(BlockOperation.Read, 2 << 20, new byte[512]));
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, 2 << 20, new byte[512]));      // Count = 2
        Assert.Equal(4, disk.Injected);
    }

    public void Dispose() => _factory.Dispose();
}
