using System.Buffers.Binary;
using BlkTarget.Storage.Interop;
using BlkTarget.Storage.Ram;
using BlkTarget.Vhost.Blk;
using BlkTarget.Vhost.Device;
using BlkTarget.Vhost.Memory;
using BlkTarget.Vhost.Protocol;
using BlkTarget.Vhost.Queues;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlkTarget.Vhost.Tests;

/// <summary>Dirty page logging for live migration: the bitmap itself, and what a virtio-blk queue marks in it.</summary>
public sealed unsafe class DirtyLogTests : IDisposable
{
    private const ulong Page = DirtyLog.PageSize;
    private readonly List<IDisposable> _owned = [];

    /// <summary>A memfd holding <paramref name="guard"/> bytes of 0xEE, then a zeroed bitmap of <paramref name="bytes"/>
    /// bytes at that offset, then <paramref name="guard"/> more bytes of 0xEE; mapped by the test as well.</summary>
    private (DirtyLog Log, MappedMemory File) CreateLog(ulong bytes, ulong guard = 0)
    {
        ulong fileBytes = bytes + 2 * guard;
        using var fd = MemFd.Create("test-log", (long)fileBytes);
        var file = MappedMemory.MapShared(fd.Fd, fileBytes);
        new Span<byte>(file.Pointer, (int)fileBytes).Fill(0xEE);
        new Span<byte>(file.Pointer + guard, (int)bytes).Clear();
        var log = DirtyLog.Map(new LogDescription(bytes, guard), fd);
        _owned.Add(log);
        _owned.Add(file);
        return (log, file);
    }

    private static IEnumerable<ulong> Marked(DirtyLog log)
    {
        for (ulong page = 0; page < log.Bytes * 8; page++)
            if (log.IsMarked(page)) yield return page;
    }

    [Fact]
    public void Bit_n_mod_8_of_byte_n_div_8_marks_page_n()
    {
        var (log, file) = CreateLog(16);
        log.MarkGuest(0, 1);                       // page 0
        log.MarkGuest(9 * Page + 100, 10);         // page 9
        log.MarkGuest(0x1FFF, 2);                  // pages 1 and 2: two bytes across a page boundary
        Assert.Equal(0x07, file.Pointer[0]);
        Assert.Equal(0x02, file.Pointer[1]);
        Assert.Equal([0UL, 1, 2, 9], Marked(log));
    }

    [Fact]
    public void A_range_across_64_bit_words_at_an_unaligned_offset_marks_every_page_and_nothing_around_it()
    {
        // mmap_offset 13: the bitmap's words straddle host words; the guard bytes around it must stay as they are.
        var (log, file) = CreateLog(32, guard: 13);
        log.MarkGuest(60 * Page + 1, 71 * Page);   // pages 60..131
        Assert.Equal(Enumerable.Range(60, 72).Select(p => (ulong)p), Marked(log));
        for (int i = 0; i < 13; i++)
        {
            Assert.Equal(0xEE, file.Pointer[i]);
            Assert.Equal(0xEE, file.Pointer[13 + 32 + i]);
        }
    }

    [Fact]
    public void Pages_beyond_the_bitmap_are_skipped_and_counted_never_written()
    {
        var (log, file) = CreateLog(8, guard: 8);   // 64 pages
        log.MarkGuest(62 * Page, 4 * Page);          // pages 62..65: 62 and 63 marked, the rest beyond
        log.MarkGuest(1000 * Page, 1);
        log.MarkGuest(ulong.MaxValue - 10, 100);     // wraps: clamped, beyond
        Assert.Equal([62UL, 63], Marked(log));
        Assert.Equal(3, log.Unlogged);
        Assert.Equal(0xEE, file.Pointer[16]);
        Assert.Equal(0xEE, file.Pointer[7]);
    }

    [Fact]
    public void A_log_description_the_file_cannot_hold_is_refused()
    {
        using var fd = MemFd.Create("test-log", 4096);
        Assert.Throws<ArgumentException>(() => DirtyLog.Map(new LogDescription(4096, 1), fd));
        Assert.Throws<ArgumentException>(() => DirtyLog.Map(new LogDescription(0, 0), fd));
        Assert.Throws<ArgumentException>(() => DirtyLog.Map(new LogDescription(8, ulong.MaxValue - 4), fd));
        Assert.Throws<ArgumentException>(() => DirtyLog.Map(new LogDescription(DirtyLog.MaxBytes + 8, 0), fd));
    }

    [Fact]
    public void Host_pointers_map_back_to_guest_pages_across_regions()
    {
        var memory = new TestMemory();
        _owned.Add(memory);
        memory.AddRegion(0x10000, 0x4000);
        memory.AddRegion(0x14000, 0x4000);
        var (log, _) = CreateLog(8);
        // Starts in the last page of region 1; the host side of region 2 is elsewhere, so this is one call per region.
        log.MarkHost(memory.Memory, memory.At(0x13800), 0x800);
        log.MarkHost(memory.Memory, memory.At(0x14000), 0x1001);
        Assert.Equal([0x13UL, 0x14, 0x15], Marked(log));
    }

    // ---- what a running virtio-blk queue marks ----

    private readonly TestRing _ring = new(size: 16, memorySize: 0x100_0000);
    private readonly Storage.IoContext _io = new();
    private ushort _next;

    private BlkQueue StartQueue(DirtyLog? log, RamDisk disk)
    {
        var ring = _ring.CreateRing();
        if (log is not null) ring.LogUsedRing(log, _ring.UsedGpa);
        var start = new QueueStartInfo(0, ring, _ring.Memory.Memory, 1UL << VirtioBlk.FeatureFlush, -1, -1, _io, log);
        var queue = new BlkQueue(start, new BlkDeviceContext("test", disk, new BlkOptions()), NullLogger.Instance);
        _owned.Add(queue);
        return queue;
    }

    private void Submit(BlkQueue queue, uint type, params (ulong Gpa, uint Len, bool Writable)[] buffers)
    {
        ulong header = _ring.Allocate(16);
        BinaryPrimitives.WriteUInt32LittleEndian(_ring.Bytes(header, 4), type);
        ushort head = _next;
        var all = buffers.Prepend((Gpa: header, Len: 16u, Writable: false)).ToArray();
        for (int i = 0; i < all.Length; i++)
        {
            ushort flags = (ushort)((all[i].Writable ? VirtqDescriptor.FlagWrite : 0) | (i < all.Length - 1 ? VirtqDescriptor.FlagNext : 0));
            _ring.SetDescriptor(_next, all[i].Gpa, all[i].Len, flags, (ushort)(_next + 1));
            _next++;
        }
        _ring.MakeAvailable(head);
        queue.Poll();
    }

    private static ulong PageOf(ulong gpa) => gpa / Page;

    [Fact]
    public void A_read_marks_its_data_pages_its_status_page_and_the_used_ring_and_nothing_else()
    {
        using var disk = new RamDisk(1 << 20);
        var (log, _) = CreateLog(0x1_0200_0000 / Page / 8);
        var queue = StartQueue(log, disk);
        ulong inPage = _ring.Allocate(512, 0x1000) + 0x100;          // inside one page
        ulong spanning = _ring.Allocate(0x3000, 0x1000) + 0x800;       // 0x2000 bytes over three pages
        ulong status = _ring.Allocate(0x1000, 0x1000) + 7;
        Submit(queue, VirtioBlk.TypeIn, (inPage, 512, true), (spanning, 0x2000, true), (status, 1, true));
        Assert.Equal(VirtioBlk.StatusOk, _ring.Bytes(status, 1)[0]);
        ulong usedFirst = PageOf(_ring.UsedGpa), usedLast = PageOf(_ring.UsedGpa + 4 + 8 * 16 + 2 - 1);
        var expected = new SortedSet<ulong> { PageOf(inPage), PageOf(spanning), PageOf(spanning) + 1, PageOf(spanning) + 2, PageOf(status) };
        for (ulong p = usedFirst; p <= usedLast; p++) expected.Add(p);
        Assert.Equal(expected, Marked(log));
        // The header page (device-readable) is not among them.
        Assert.DoesNotContain(PageOf(TestRing.DataGpa), Marked(log).Where(p => p < PageOf(inPage)));
    }

    [Fact]
    public void A_write_marks_only_its_status_byte_and_the_used_ring()
    {
        using var disk = new RamDisk(1 << 20);
        var (log, _) = CreateLog(0x1_0200_0000 / Page / 8);
        var queue = StartQueue(log, disk);
        ulong data = _ring.Allocate(0x2000, 0x1000);
        ulong status = _ring.Allocate(0x1000, 0x1000);
        Submit(queue, VirtioBlk.TypeOut, (data, 0x2000, false), (status, 1, true));
        var marked = Marked(log).ToList();
        Assert.Contains(PageOf(status), marked);
        Assert.DoesNotContain(PageOf(data), marked);
        Assert.DoesNotContain(PageOf(data) + 1, marked);
        Assert.Contains(PageOf(_ring.UsedGpa + 2), marked);
    }

    [Fact]
    public void A_read_into_a_buffer_that_crosses_into_the_next_region_marks_pages_in_both()
    {
        // A second region, adjacent in guest-physical space but mapped elsewhere in this process.
        ulong second = TestRing.Base + 0x100_0000;
        _ring.Memory.AddRegion(second, 0x10_0000);
        using var disk = new RamDisk(1 << 20);
        var (log, _) = CreateLog((second + 0x10_0000) / Page / 8);
        var queue = StartQueue(log, disk);
        ulong buffer = second - 0x800;
        ulong status = _ring.Allocate(1);
        Submit(queue, VirtioBlk.TypeIn, (buffer, 0x1800, true), (status, 1, true));
        Assert.Equal(VirtioBlk.StatusOk, _ring.Bytes(status, 1)[0]);
        var marked = Marked(log).ToList();
        Assert.Contains(PageOf(buffer), marked);
        Assert.Contains(PageOf(second), marked);
        Assert.DoesNotContain(PageOf(second) + 1, marked);
    }

    [Fact]
    public void Used_ring_writes_are_marked_at_log_guest_addr_only_with_the_ring_flag()
    {
        var (log, _) = CreateLog(0x1_0200_0000 / Page / 8);
        var ring = _ring.CreateRing();
        ulong elsewhere = 0x40_0000;   // log_guest_addr need not be where the ring is mapped: the frontend says where
        ring.LogUsedRing(log, elsewhere);
        ring.PushUsed(3, 1);
        Assert.Equal([PageOf(elsewhere)], Marked(log));
        ring.PublishUsed();
        Assert.Equal([PageOf(elsewhere)], Marked(log));
        ring.LogUsedRing(null, 0);
        for (ushort i = 0; i < 600; i++) ring.PushUsed(i, 1);
        ring.PublishUsed();
        Assert.Equal([PageOf(elsewhere)], Marked(log));
    }

    [Fact]
    public void A_used_element_in_the_second_page_of_the_used_ring_marks_that_page()
    {
        var (log, _) = CreateLog(8);
        var ring = _ring.CreateRing();
        ring.LogUsedRing(log, 0x1000 - 4 - 8 * 3);   // element 3 starts at 0x1000
        for (ushort i = 0; i < 4; i++) ring.PushUsed(i, 1);
        Assert.Equal([0UL, 1], Marked(log));
    }

    [Fact]
    public void A_replaced_log_takes_the_next_marks_and_the_old_one_gets_no_more()
    {
        using var disk = new RamDisk(1 << 20);
        var (first, _) = CreateLog(0x1_0200_0000 / Page / 8);
        var (second, _) = CreateLog(0x1_0200_0000 / Page / 8);
        var queue = StartQueue(first, disk);
        ulong a = _ring.Allocate(0x1000, 0x1000);
        Submit(queue, VirtioBlk.TypeIn, (a, 512, true), (_ring.Allocate(1), 1, true));
        var before = Marked(first).ToList();
        queue.ReplaceDirtyLog(second);
        ulong b = _ring.Allocate(0x1000, 0x1000);
        Submit(queue, VirtioBlk.TypeIn, (b, 512, true), (_ring.Allocate(1), 1, true));
        Assert.Equal(before, Marked(first));
        Assert.Contains(PageOf(b), Marked(second));
        Assert.DoesNotContain(PageOf(a), Marked(second));
    }

    [Fact]
    public void A_queue_started_without_a_log_marks_nothing_and_cannot_switch_logging_on_while_running()
    {
        using var disk = new RamDisk(1 << 20);
        var (log, _) = CreateLog(0x1_0200_0000 / Page / 8);
        var queue = StartQueue(null, disk);
        Submit(queue, VirtioBlk.TypeIn, (_ring.Allocate(512), 512, true), (_ring.Allocate(1), 1, true));
        Assert.Empty(Marked(log));
        Assert.Throws<InvalidOperationException>(() => queue.ReplaceDirtyLog(log));
    }

    [Fact]
    public void Get_id_marks_the_id_buffer()
    {
        using var disk = new RamDisk(1 << 20);
        var (log, _) = CreateLog(0x1_0200_0000 / Page / 8);
        var queue = StartQueue(log, disk);
        ulong id = _ring.Allocate(0x1000, 0x1000) + 0xFF0;   // 20 bytes over a page boundary
        Submit(queue, VirtioBlk.TypeGetId, (id, 20, true), (_ring.Allocate(1), 1, true));
        Assert.Contains(PageOf(id), Marked(log));
        Assert.Contains(PageOf(id) + 1, Marked(log));
    }

    [Fact]
    public void A_scsi_read_marks_its_response_with_sense_room_and_data_in_pages_and_a_write_not_its_data_out()
    {
        var (log, _) = CreateLog(0x1_0200_0000 / Page / 8);
        using var scsi = new Scsi.ScsiHarness(dirtyLog: log);
        var read = scsi.Start(Scsi.Cdbs.Rw10(BlkTarget.Vhost.Scsi.ScsiOp.Read10, 0, 24), dataIn: 24 * 512);
        scsi.Collect(read).AssertGood();
        var marked = Marked(log).ToHashSet();
        Assert.Superset(PagesOfRange(read.Resp, (ulong)read.ResponseLength + 24 * 512).ToHashSet(), marked);

        var data = new byte[64 * 512];
        var write = scsi.Start(Scsi.Cdbs.Rw10(BlkTarget.Vhost.Scsi.ScsiOp.Write10, 64, 64), dataOut: data);
        scsi.Collect(write).AssertGood();
        // The data-out buffer is 32 KiB: its pages in the middle hold nothing else, and the target only read them.
        ulong dataOut = write.Buffers.First(b => !b.Writable && b.Len == data.Length).Gpa;
        var after = Marked(log).ToHashSet();
        Assert.Contains(PageOf(write.Resp), after);
        Assert.DoesNotContain(PageOf(dataOut) + 2, after);
        Assert.DoesNotContain(PageOf(dataOut) + 4, after);
    }

    private static IEnumerable<ulong> PagesOfRange(ulong gpa, ulong length)
    {
        for (ulong p = gpa / Page; p <= (gpa + length - 1) / Page; p++) yield return p;
    }

    public void Dispose()
    {
        foreach (var d in Enumerable.Reverse(_owned)) d.Dispose();
        _ring.Dispose();
        _io.Dispose();
    }
}
