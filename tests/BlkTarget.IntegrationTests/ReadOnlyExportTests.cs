using BlkTarget.Vhost.Blk;
using BlkTarget.Vhost.Frontend;
using Xunit.Abstractions;
using static BlkTarget.IntegrationTests.TestData;

namespace BlkTarget.IntegrationTests;

public sealed class ReadOnlyExportTests(ITestOutputHelper output)
{
    [Fact]
    public void ReadOnlyExportOffersRoAndNoDiscardOrWriteZeroes()
    {
        using var target = new TestTarget(output, new TargetSpec { ReadOnly = true });
        using var guest = TestGuest.Connect(target.SocketPath);
        Assert.True(guest.Frontend.HasFeature(VirtioBlk.FeatureRo));
        Assert.False(guest.Frontend.HasFeature(VirtioBlk.FeatureDiscard));
        Assert.False(guest.Frontend.HasFeature(VirtioBlk.FeatureWriteZeroes));
    }

    [Fact]
    public void WritesDiscardsAndWriteZeroesFailWithIoErrWhileReadsWork()
    {
        using var target = new TestTarget(output, new TargetSpec { ReadOnly = true });
        using var guest = TestGuest.Connect(target.SocketPath);
        var blk = guest.Blk[0];
        var data = guest.Allocate(4096);
        Fill(data.Span, seed: 1);
        Assert.Equal(IoErr, blk.Execute(BlkRequestType.Out, 0, [data]).Status);
        Assert.Equal(IoErr, blk.Execute(BlkRequestType.Out, 8, [data], indirect: true).Status);
        var ranges = guest.Allocate(16, 16);
        BlkRequestQueue.WriteRanges(ranges.Span, [new BlkRange(0, 8)]);
        Assert.Equal(IoErr, blk.Execute(BlkRequestType.Discard, 0, [ranges]).Status);
        BlkRequestQueue.WriteRanges(ranges.Span, [new BlkRange(0, 8, BlkRange.FlagUnmap)]);
        Assert.Equal(IoErr, blk.Execute(BlkRequestType.WriteZeroes, 0, [ranges]).Status);

        var back = guest.Allocate(4096);
        back.Span.Fill(0x5a);
        var completion = blk.Execute(BlkRequestType.In, 0, [back]);
        Assert.Equal(Ok, completion.Status);
        Assert.Equal(4097u, completion.UsedLength);
        Assert.True(AllZero(back.Span), "the failed write must not have reached the disk");
        Assert.Equal(Ok, blk.Execute(BlkRequestType.Flush, 0, []).Status);
    }
}
