namespace BlkTarget.Storage.Tests.Conformance;

/// <summary>
/// The behaviour every backend must share, checked against a byte-array model of the disk: random
/// reads/writes/discards/zeroes, boundary sectors, read-only behaviour, alignment and range errors.
/// </summary>
public sealed unsafe class BackendConformanceTests : IDisposable
{
    private readonly BackendFactory _factory = new();

    [Theory]
    [MemberData(nameof(BackendFactory.Kinds), MemberType = typeof(BackendFactory))]
    public void Random_operations_match_a_model(string kind)
    {
        using var device = _factory.Create(kind);
        using var driver = new ChannelDriver(device);
        var model = new byte[BackendFactory.Size];
        var unknown = new bool[BackendFactory.Size];       // discarded where discard is only a hint: anything may be read
        var random = new Random(1234);
        for (int step = 0; step < 300; step++)
        {
            int blocks = random.Next(1, 65);
            ulong offset = (ulong)random.Next(0, (int)(BackendFactory.Size / 512) - blocks) * 512;
            int length = blocks * 512;
            switch (random.Next(10))
            {
                case < 5:
                    var data = new byte[length];
                    random.NextBytes(data);
                    Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, offset, data, pieces: random.Next(1, 4) == 1 ? 1 : blocks > 1 ? 2 : 1));
                    data.CopyTo(model, (int)offset);
                    Array.Clear(unknown, (int)offset, length);
                    break;
                case < 8:
                    var read = new byte[length];
                    Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, offset, read));
                    Assert.True(Matches(model, unknown, (int)offset, read), $"step {step}: read at {offset} differs from the model");
                    break;
                case 8:
                    Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.Discard, offset, (ulong)length));
                    Array.Clear(model, (int)offset, length);
                    if (!BackendFactory.DiscardZeroes(kind)) Array.Fill(unknown, true, (int)offset, length);
                    break;
                default:
                    var flags = random.Next(2) == 0 ? BlockRequestFlags.Unmap : BlockRequestFlags.None;
                    Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.WriteZeroes, offset, (ulong)length, flags: flags));
                    Array.Clear(model, (int)offset, length);
                    Array.Clear(unknown, (int)offset, length);
                    break;
            }
        }
        Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.Flush, 0, 0));
        var all = new byte[BackendFactory.Size];
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, 0, all));
        Assert.True(Matches(model, unknown, 0, all), "final contents differ from the model");
    }

    private static bool Matches(byte[] model, bool[] unknown, int offset, byte[] read)
    {
        for (int i = 0; i < read.Length; i++)
            if (!unknown[offset + i] && model[offset + i] != read[i]) return false;
        return true;
    }

    [Theory]
    [MemberData(nameof(BackendFactory.Kinds), MemberType = typeof(BackendFactory))]
    public void First_and_last_blocks_work_and_one_past_the_end_is_out_of_range(string kind)
    {
        using var device = _factory.Create(kind, blockSize: 4096);
        using var driver = new ChannelDriver(device);
        var data = Enumerable.Range(0, 4096).Select(i => (byte)(i ^ 0x5A)).ToArray();
        ulong last = BackendFactory.Size - 4096;
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, 0, data));
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, last, data));
        var back = new byte[4096];
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, last, back));
        Assert.Equal(data, back);
        Assert.Equal(BlockStatus.OutOfRange, driver.Transfer(BlockOperation.Read, BackendFactory.Size, back));
        Assert.Equal(BlockStatus.OutOfRange, driver.Transfer(BlockOperation.Write, last, new byte[8192]));
        Assert.Equal(BlockStatus.OutOfRange, driver.Transfer(BlockOperation.Read, 512, back));
        Assert.Equal(BlockStatus.OutOfRange, driver.Run(BlockOperation.Discard, ulong.MaxValue - 4095, 4096));
    }

    [Theory]
    [MemberData(nameof(BackendFactory.Kinds), MemberType = typeof(BackendFactory))]
    public void Read_only_devices_refuse_every_modification(string kind)
    {
        using var device = _factory.Create(kind, readOnly: true);
        using var driver = new ChannelDriver(device);
        Assert.True(device.Info.ReadOnly);
        Assert.Equal(BlockStatus.ReadOnly, driver.Transfer(BlockOperation.Write, 0, new byte[512]));
        Assert.Equal(BlockStatus.ReadOnly, driver.Run(BlockOperation.Discard, 0, 512));
        Assert.Equal(BlockStatus.ReadOnly, driver.Run(BlockOperation.WriteZeroes, 0, 512));
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, 0, new byte[512]));
    }

    [Theory]
    [MemberData(nameof(BackendFactory.Kinds), MemberType = typeof(BackendFactory))]
    public void Misaligned_guest_buffers_still_transfer_correctly(string kind)
    {
        using var device = _factory.Create(kind);
        using var driver = new ChannelDriver(device);
        var data = new byte[3 * 512];
        new Random(9).NextBytes(data);
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, 1024, data, pieces: 3, misalign: 8));
        var back = new byte[data.Length];
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, 1024, back, pieces: 1, misalign: 24));
        Assert.Equal(data, back);
    }

    [Theory]
    [MemberData(nameof(BackendFactory.Kinds), MemberType = typeof(BackendFactory))]
    public void Fua_writes_and_flush_succeed_and_the_data_reads_back(string kind)
    {
        using var device = _factory.Create(kind);
        using var driver = new ChannelDriver(device);
        Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.Flush, 0, 0));
        var data = new byte[3 * 4096];
        new Random(5).NextBytes(data);
        // FUA on a never-written range (an image allocates), then over written data, split over iovecs.
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, 64 << 10, data, pieces: 3, flags: BlockRequestFlags.Fua));
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, 64 << 10, data.AsSpan(0, 4096), flags: BlockRequestFlags.Fua));
        Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.WriteZeroes, (64 << 10) + 4096, 4096, BlockRequestFlags.Fua));
        var back = new byte[data.Length];
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, 64 << 10, back));
        Assert.Equal(data.AsSpan(0, 4096).ToArray(), back[..4096]);
        Assert.All(back[4096..8192], b => Assert.Equal(0, b));
        Assert.Equal(data[8192..], back[8192..]);
        Assert.Equal(BlockStatus.Ok, driver.Run(BlockOperation.Flush, 0, 0));
    }

    [Theory]
    [MemberData(nameof(BackendFactory.Kinds), MemberType = typeof(BackendFactory))]
    public void Requests_with_more_iovecs_than_the_kernel_takes_at_once_still_transfer(string kind)
    {
        // 1500 buffers of 512 bytes: more than IOV_MAX (1024) for one readv/writev, as a long guest chain may have.
        using var device = _factory.Create(kind);
        using var driver = new ChannelDriver(device);
        var data = new byte[1500 * 512];
        new Random(21).NextBytes(data);
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Write, 4096, data, pieces: 1500));
        var back = new byte[data.Length];
        Assert.Equal(BlockStatus.Ok, driver.Transfer(BlockOperation.Read, 4096, back, pieces: 1500));
        Assert.Equal(data, back);
    }

    public void Dispose() => _factory.Dispose();
}
