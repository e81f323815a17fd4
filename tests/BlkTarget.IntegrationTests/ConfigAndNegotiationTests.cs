using BlkTarget.Vhost.Blk;
using BlkTarget.Vhost.Frontend;
using BlkTarget.Vhost.Protocol;
using Xunit.Abstractions;

namespace BlkTarget.IntegrationTests;

public sealed class ConfigAndNegotiationTests(ITestOutputHelper output)
{
    [Fact]
    public void HandshakeNegotiatesWhatBothSidesSupport()
    {
        using var target = new TestTarget(output, new TargetSpec { Queues = 3 });
        using var guest = TestGuest.Connect(target.SocketPath, queues: 3);
        var frontend = guest.Frontend;
        Assert.Equal(VhostUserFrontendOptions.SupportedProtocolFeatures, frontend.AckedProtocolFeatures);
        Assert.Equal(3, frontend.BackendQueueCount);
        Assert.Equal((ulong)VhostUserSession.MaxMemSlots, frontend.MaxMemSlots);
        foreach (int bit in new[] { VirtioFeatures.Version1, VirtioFeatures.VhostUserProtocolFeatures, VirtioFeatures.RingEventIdx,
                     VirtioFeatures.RingIndirectDesc, VirtioBlk.FeatureFlush, VirtioBlk.FeatureBlkSize, VirtioBlk.FeatureSegMax,
                     VirtioBlk.FeatureMq, VirtioBlk.FeatureDiscard, VirtioBlk.FeatureWriteZeroes, VirtioBlk.FeatureConfigWce })
            Assert.True(frontend.HasFeature(bit), $"feature bit {bit} not negotiated");
        Assert.False(frontend.HasFeature(VirtioFeatures.RingPacked));
        Assert.False(frontend.HasFeature(VirtioBlk.FeatureRo));
        Assert.Equal(frontend.OfferedFeatures & frontend.Options.SupportedFeatures, frontend.AckedFeatures);
        Assert.All(guest.Queues, q => Assert.True(q.EventIdx));
    }

    [Fact]
    public void OptionalRingFeaturesAreLeftOutWhenNotWanted()
    {
        using var target = new TestTarget(output);
        using var guest = TestGuest.Connect(target.SocketPath, options: new VhostUserFrontendOptions { EventIdx = false, IndirectDescriptors = false }, maxIndirect: 0);
        Assert.False(guest.Frontend.HasFeature(VirtioFeatures.RingEventIdx));
        Assert.False(guest.Frontend.HasFeature(VirtioFeatures.RingIndirectDesc));
        Assert.False(guest.Queues[0].EventIdx);
        Assert.Equal(0, guest.Blk[0].Execute(BlkRequestType.Flush, 0, []).Status);
    }

    [Fact]
    // Bit 35 (VIRTIO_F_IN_ORDER) is not offered; RING_PACKED (34) now is.
    public void SetFeaturesWithBitsNotOfferedIsRefused()
    {
        using var target = new TestTarget(output);
        using var guest = TestGuest.Connect(target.SocketPath, start: false);
        var error = Assert.Throws<VhostUserFrontendException>(() => guest.Frontend.SetFeatures(VirtioFeatures.Bit(35)));
        Assert.Equal(VhostUserRequest.SetFeatures, error.Request);
        Assert.NotEqual(0ul, error.AckValue);
    }

    [Theory]
    [InlineData(512u, 1)]
    [InlineData(4096u, 2)]
    [InlineData(512u, 4)]
    public void ConfigDescribesTheExport(uint blockSize, int queues)
    {
        using var target = new TestTarget(output, new TargetSpec { BlockSize = blockSize, Queues = queues, SizeBytes = 32 << 20 });
        using var frontend = VhostUserFrontend.Connect(target.SocketPath);
        var config = frontend.Config!;
        var options = target.Device.Context.Options;
        Assert.Equal((32UL << 20) / 512, config.Capacity);
        Assert.Equal(blockSize, config.BlockSize);
        Assert.Equal((ushort)queues, config.NumQueues);
        Assert.Equal(queues, frontend.BackendQueueCount);
        Assert.Equal(options.SegMax, config.SegMax);
        Assert.Equal(options.SizeMax, config.SizeMax);
        Assert.Equal(1, config.Writeback);
        Assert.Equal(options.MaxRangeSectors, config.MaxDiscardSectors);
        Assert.Equal(options.MaxRangeSegments, config.MaxDiscardSeg);
        Assert.Equal(blockSize / 512, config.DiscardSectorAlignment);
        Assert.Equal(options.MaxRangeSectors, config.MaxWriteZeroesSectors);
        Assert.Equal(options.MaxRangeSegments, config.MaxWriteZeroesSeg);
        Assert.Equal(1, config.WriteZeroesMayUnmap);
    }

    [Fact]
    public void GetConfigOf256BytesReturns256BytesPaddedWithZeros()
    {
        using var target = new TestTarget(output, new TargetSpec { Queues = 2 });
        using var frontend = VhostUserFrontend.Connect(target.SocketPath);
        var bytes = frontend.GetConfig(0, 256);
        Assert.Equal(256, bytes.Length);
        Assert.Equal(frontend.GetConfig(0, VirtioBlkConfig.Length), bytes[..VirtioBlkConfig.Length]);
        Assert.True(TestData.AllZero(bytes.AsSpan(VirtioBlkConfig.Length)));
        Assert.Equal((ushort)2, VirtioBlkConfig.Parse(bytes).NumQueues);
        // A window in the middle returns exactly that window.
        Assert.Equal(bytes[20..24], frontend.GetConfig(20, 4));
    }

    [Theory]
    [InlineData(0u, 257u)]
    [InlineData(200u, 100u)]
    [InlineData(256u, 1u)]
    public void GetConfigBeyond256BytesGetsAnEmptyReplyAndTheSessionGoesOn(uint offset, uint size)
    {
        using var target = new TestTarget(output);
        using var frontend = VhostUserFrontend.Connect(target.SocketPath);
        Assert.Null(frontend.TryGetConfig(offset, size));
        Assert.NotNull(frontend.TryGetConfig(0, 60));
    }

    [Fact]
    public void WritebackCanBeToggledButOtherConfigFieldsAreReadOnly()
    {
        using var target = new TestTarget(output);
        using var guest = TestGuest.Connect(target.SocketPath);
        var frontend = guest.Frontend;
        frontend.SetConfig(VirtioBlkConfig.WritebackOffset, [0]);
        Assert.Equal(0, VirtioBlkConfig.Parse(frontend.GetConfig(0, VirtioBlkConfig.Length)).Writeback);
        Assert.False(target.Device.Context.Config.WriteCacheEnabled);
        // Writes go through in write-through mode too.
        var buffer = guest.Allocate(4096);
        TestData.Fill(buffer.Span, seed: 8);
        Assert.Equal(0, guest.Blk[0].Execute(BlkRequestType.Out, 0, [buffer]).Status);
        frontend.SetConfig(VirtioBlkConfig.WritebackOffset, [1]);
        Assert.True(target.Device.Context.Config.WriteCacheEnabled);

        Assert.Throws<VhostUserFrontendException>(() => frontend.SetConfig(0, new byte[8]));
        Assert.Throws<VhostUserFrontendException>(() => frontend.SetConfig(VirtioBlkConfig.WritebackOffset, [2]));
        Assert.Equal((16UL << 20) / 512, VirtioBlkConfig.Parse(frontend.GetConfig(0, VirtioBlkConfig.Length)).Capacity);
    }

    [Fact]
    public void AGuestsWritebackChoiceLastsUntilDeviceResetOrTheNextSession()
    {
        using var target = new TestTarget(output);
        byte Writeback(VhostUserFrontend f) => VirtioBlkConfig.Parse(f.GetConfig(0, VirtioBlkConfig.Length)).Writeback;
        using (var guest = TestGuest.Connect(target.SocketPath))
        {
            guest.Frontend.SetConfig(VirtioBlkConfig.WritebackOffset, [0]);
            Assert.Equal(0, Writeback(guest.Frontend));
            guest.Stop();
            guest.ResetQueues();
            guest.Start();
            Assert.Equal(0, Writeback(guest.Frontend));              // a stop and restart is no reset
            guest.Frontend.ResetDevice();
            Assert.Equal(1, Writeback(guest.Frontend));
            guest.Frontend.SetConfig(VirtioBlkConfig.WritebackOffset, [0]);
        }
        Assert.True(target.WaitForNoFrontend(TimeSpan.FromSeconds(10)));
        using var next = VhostUserFrontend.Connect(target.SocketPath);
        Assert.Equal(1, Writeback(next));
        Assert.True(target.Device.Context.Config.WriteCacheEnabled);
    }
}
