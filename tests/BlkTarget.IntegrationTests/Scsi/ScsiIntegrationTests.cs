using BlkTarget.Storage;
using System.Buffers.Binary;
using BlkTarget.Storage.Ram;
using BlkTarget.Vhost.Frontend;
using BlkTarget.Vhost.Protocol;
using BlkTarget.Vhost.Reactor;
using BlkTarget.Vhost.Scsi;
using Xunit.Abstractions;
using static BlkTarget.IntegrationTests.TestData;

namespace BlkTarget.IntegrationTests.Scsi;

/// <summary>The real target with a virtio-scsi device in process: target 0 LUN 0 (512-byte blocks; a RAM disk
/// unless <c>lun0</c> gives another backend of <see cref="Lun0Bytes"/>) and LUN 1 (4 KiB blocks), target 2 LUN 0
/// read-only; two request queues.</summary>
internal sealed class ScsiTestTarget : IDisposable
{
    public const ulong Lun0Bytes = 16 << 20;
    public const ulong Lun1Bytes = 8 << 20;

    public ScsiTestTarget(ITestOutputHelper output, IBlockDevice? lun0 = null)
    {
        Log = new TestLogger(output);
        SocketPath = $"/tmp/blkt-scsi-{Guid.NewGuid():N}.sock";
        Reactors = new ReactorPool(null, 2, TimeSpan.FromMicroseconds(50), Log);
        Disks = [lun0 ?? new RamDisk(Lun0Bytes), new RamDisk(Lun1Bytes, 4096), new RamDisk(1 << 20, readOnly: true)];
        Device = new VirtioScsiDevice("scsi-it", [
            new ScsiLunDefinition(0, 0, Disks[0], "IT-LUN0"),
            new ScsiLunDefinition(0, 1, Disks[1], "IT-LUN1"),
            new ScsiLunDefinition(2, 0, Disks[2], "IT-RO"),
        ], new ScsiOptions { RequestQueues = 2 }, Log);
        Server = VhostUserServer.Start(SocketPath, Device, Reactors, 0, Log);
    }

    public TestLogger Log { get; }
    public string SocketPath { get; }
    public ReactorPool Reactors { get; }
    public IBlockDevice[] Disks { get; }
    public VirtioScsiDevice Device { get; }
    public VhostUserServer Server { get; }

    public void Dispose()
    {
        Server.Dispose();
        Reactors.Dispose();
        foreach (var d in Disks) d.Dispose();
    }
}

/// <summary>virtio-scsi through our vhost-user frontend over a real socket: negotiation, config, SCSI commands on
/// both request queues and several LUNs, the control and event queues, stop and restart.</summary>
public sealed class ScsiIntegrationTests(ITestOutputHelper output)
{

    private static TestGuest Connect(ScsiTestTarget target, bool packed = false) =>
        TestGuest.Connect(target.SocketPath, queues: 4, options: new VhostUserFrontendOptions { ConfigSize = ScsiConfigSpace.Size }, packed: packed);

    [Fact]
    public void The_frontend_sees_control_event_and_request_queues_and_the_scsi_config()
    {
        using var target = new ScsiTestTarget(output);
        using var guest = Connect(target);
        Assert.Equal(4, guest.Frontend.BackendQueueCount);
        Assert.True(guest.Frontend.HasFeature(VirtioFeatures.Version1));
        Assert.True(guest.Frontend.HasFeature(VirtioFeatures.RingEventIdx));
        var config = guest.Frontend.GetConfig(0, ScsiConfigSpace.Size);
        Assert.Equal(2u, BinaryPrimitives.ReadUInt32LittleEndian(config));
        Assert.Equal(96u, BinaryPrimitives.ReadUInt32LittleEndian(config.AsSpan(ScsiConfigSpace.OffSenseSize)));
        Assert.Equal(32u, BinaryPrimitives.ReadUInt32LittleEndian(config.AsSpan(ScsiConfigSpace.OffCdbSize)));
        Assert.Equal(2, BinaryPrimitives.ReadUInt16LittleEndian(config.AsSpan(ScsiConfigSpace.OffMaxTarget)));
        Assert.Equal(1u, BinaryPrimitives.ReadUInt32LittleEndian(config.AsSpan(ScsiConfigSpace.OffMaxLun)));
    }

    [Fact]
    public void Data_written_to_each_lun_through_each_request_queue_reads_back_and_luns_are_separate() => DataRoundTripsPerLun(packed: false);

    [Fact]
    public void Data_round_trips_per_lun_over_packed_rings() => DataRoundTripsPerLun(packed: true);

    private void DataRoundTripsPerLun(bool packed)
    {
        using var target = new ScsiTestTarget(output);
        using var guest = Connect(target, packed);
        Assert.Equal(packed, guest.Frontend.HasFeature(VirtioFeatures.RingPacked));
        var queues = new[] { new ScsiCommandQueue(guest.Queues[2], guest.Arena), new ScsiCommandQueue(guest.Queues[3], guest.Arena) };
        for (int q = 0; q < 2; q++)
        {
            for (ushort lun = 0; lun < 2; lun++)
            {
                uint blockSize = lun == 0 ? 512u : 4096u;
                var data = guest.Allocate(4 * blockSize);
                Fill(data.Span, seed: q * 10 + lun);
                var pieces = Split(data, 100, 4 * blockSize - 100);
                Assert.True(queues[q].Execute(0, lun, Rw10(ScsiOp.Write10, (uint)(q * 16), 4), dataOut: pieces).IsGood);
                var back = guest.Allocate(4 * blockSize);
                var read = queues[q].Execute(0, lun, Rw10(ScsiOp.Read10, (uint)(q * 16), 4), dataIn: [back]);
                Assert.True(read.IsGood);
                Assert.Equal(0u, read.Resid);
                Assert.Equal(VirtioScsi.ResponseHeaderLength + VirtioScsi.DefaultSenseSize + 4 * blockSize, read.UsedLength);
                Assert.Equal(Random((int)(4 * blockSize), seed: q * 10 + lun), back.Span.ToArray());
            }
        }
        // LUN 0's data did not land on LUN 1: LUN 1 block 0 holds its own pattern.
        var lun1 = guest.Allocate(4096);
        Assert.True(queues[0].Execute(0, 1, Rw10(ScsiOp.Read10, 0, 1), dataIn: [lun1]).IsGood);
        Assert.Equal(Random(4 * 4096, seed: 1)[..4096], lun1.Span.ToArray());
    }

    [Fact]
    public void Inquiry_capacity_and_addressing_errors_over_the_socket()
    {
        using var target = new ScsiTestTarget(output);
        using var guest = Connect(target);
        var q = new ScsiCommandQueue(guest.Queues[2], guest.Arena);
        var inquiry = guest.Allocate(96);
        Assert.True(q.Execute(0, 0, [ScsiOp.Inquiry, 0, 0, 0, 96, 0], dataIn: [inquiry]).IsGood);
        Assert.Equal("BLKTARGT", System.Text.Encoding.ASCII.GetString(inquiry.Span.Slice(8, 8)));
        var serial = guest.Allocate(64);
        Assert.True(q.Execute(0, 1, [ScsiOp.Inquiry, 1, 0x80, 0, 64, 0], dataIn: [serial]).IsGood);
        Assert.Equal("IT-LUN1", System.Text.Encoding.ASCII.GetString(serial.Span.Slice(4, serial.Span[3])));

        var capacity = guest.Allocate(32);
        var rc16 = new byte[16];
        rc16[0] = ScsiOp.ServiceActionIn16;
        rc16[1] = ScsiOp.SaReadCapacity16;
        rc16[13] = 32;
        Assert.True(q.Execute(0, 1, rc16, dataIn: [capacity]).IsGood);
        Assert.Equal(ScsiTestTarget.Lun1Bytes / 4096 - 1, BinaryPrimitives.ReadUInt64BigEndian(capacity.Span));
        Assert.Equal(4096u, BinaryPrimitives.ReadUInt32BigEndian(capacity.Span[8..]));

        Assert.Equal(VirtioScsi.BadTarget, q.Execute(1, 0, [ScsiOp.TestUnitReady, 0, 0, 0, 0, 0]).Response);
        var missing = q.Execute(0, 5, [ScsiOp.TestUnitReady, 0, 0, 0, 0, 0]);
        Assert.Equal(ScsiStatus.CheckCondition, missing.Status);
        Assert.Equal(SenseCode.LunNotSupported, missing.SenseCode);
        var write = guest.Allocate(512);
        var readOnly = q.Execute(2, 0, Rw10(ScsiOp.Write10, 0, 1), dataOut: [write]);
        Assert.Equal(SenseCode.WriteProtected, readOnly.SenseCode);
        var bad = q.Execute(0, 0, [0xc1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        Assert.Equal(SenseCode.InvalidOpcode, bad.SenseCode);
        Assert.Equal(18, bad.Sense.Length);
    }

    [Fact]
    public void Task_management_and_notification_queries_on_the_control_queue()
    {
        using var target = new ScsiTestTarget(output);
        using var guest = Connect(target);
        var tmf = new byte[VirtioScsi.TmfRequestLength];
        BinaryPrimitives.WriteUInt32LittleEndian(tmf.AsSpan(4), VirtioScsi.TmfLogicalUnitReset);
        ScsiCommandQueue.Address(0, 1).CopyTo(tmf, 8);
        Assert.Equal(VirtioScsi.FunctionComplete, ScsiCommandQueue.Control(guest.Queues[0], guest.Arena, tmf, 1)[0]);
        BinaryPrimitives.WriteUInt32LittleEndian(tmf.AsSpan(4), VirtioScsi.TmfITNexusReset);
        Assert.Equal(VirtioScsi.FunctionComplete, ScsiCommandQueue.Control(guest.Queues[0], guest.Arena, tmf, 1)[0]);
        ScsiCommandQueue.Address(9, 0).CopyTo(tmf, 8);
        Assert.Equal(VirtioScsi.BadTarget, ScsiCommandQueue.Control(guest.Queues[0], guest.Arena, tmf, 1)[0]);

        var an = new byte[VirtioScsi.AnRequestLength];
        BinaryPrimitives.WriteUInt32LittleEndian(an, VirtioScsi.TypeAnSubscribe);
        ScsiCommandQueue.Address(0, 0).CopyTo(an, 4);
        var response = ScsiCommandQueue.Control(guest.Queues[0], guest.Arena, an, 5);
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32LittleEndian(response));
        Assert.Equal(VirtioScsi.Ok, response[4]);
    }

    [Fact]
    public void Event_buffers_stay_posted_across_a_stop_and_the_device_restarts_with_its_data()
    {
        using var target = new ScsiTestTarget(output);
        using var guest = Connect(target);
        var events = guest.Queues[1];
        for (int i = 0; i < 4; i++) Assert.True(events.TryAdd([guest.Allocate(VirtioScsi.EventInfoSize, 64).Writable], (ulong)i));
        events.KickIfNeeded();
        var q = new ScsiCommandQueue(guest.Queues[2], guest.Arena);
        var data = guest.Allocate(4096);
        Fill(data.Span, seed: 77);
        Assert.True(q.Execute(0, 0, Rw10(ScsiOp.Write10, 100, 8), dataOut: [data]).IsGood);

        var bases = guest.Stop();
        Assert.Equal(0u, bases[1]);                   // no event buffer was consumed
        Assert.Equal(1u, bases[2]);
        Assert.False(events.HasUsed);
        guest.Start();
        var back = guest.Allocate(4096);
        Assert.True(q.Execute(0, 0, Rw10(ScsiOp.Read10, 100, 8), dataIn: [back]).IsGood);
        Assert.Equal(data.Span.ToArray(), back.Span.ToArray());
        Assert.False(events.HasUsed);
    }

    /// <summary>WCE of LUN 0's caching page as MODE SENSE(6) reports it.</summary>
    private static bool WriteCache(TestGuest guest, ScsiCommandQueue q)
    {
        var page = guest.Allocate(64);
        Assert.True(q.Execute(0, 0, [ScsiOp.ModeSense6, 0x08, ModePages.CachingPage, 0, 64, 0], dataIn: [page]).IsGood);
        return (page.Span[4 + 2] & 0x04) != 0;
    }

    private static void SetWriteCache(TestGuest guest, ScsiCommandQueue q, bool enabled)
    {
        var list = guest.Allocate(24);
        list.Span.Clear();
        list.Span[4] = ModePages.CachingPage;
        list.Span[5] = 0x12;
        list.Span[6] = enabled ? (byte)0x04 : (byte)0;
        Assert.True(q.Execute(0, 0, [ScsiOp.ModeSelect6, 0x10, 0, 0, 24, 0], dataOut: [list]).IsGood);
    }

    [Fact]
    public void A_guests_write_cache_choice_lasts_until_device_reset_or_the_next_session()
    {
        using var target = new ScsiTestTarget(output);
        using (var guest = Connect(target))
        {
            var q = new ScsiCommandQueue(guest.Queues[2], guest.Arena);
            SetWriteCache(guest, q, enabled: false);
            Assert.False(WriteCache(guest, q));
            guest.Stop();
            guest.ResetQueues();
            guest.Start();
            Assert.False(WriteCache(guest, q));                      // a stop and restart is no reset
            guest.Frontend.ResetDevice();
            guest.ResetQueues();
            guest.Start();
            Assert.True(WriteCache(guest, q));
            SetWriteCache(guest, q, enabled: false);
        }
        using var next = Connect(target);
        Assert.True(WriteCache(next, new ScsiCommandQueue(next.Queues[2], next.Arena)));
    }
}
