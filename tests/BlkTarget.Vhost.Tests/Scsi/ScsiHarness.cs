using System.Buffers.Binary;
using BlkTarget.Storage;
using BlkTarget.Storage.Ram;
using BlkTarget.Vhost.Device;
using BlkTarget.Vhost.Memory;
using BlkTarget.Vhost.Queues;
using BlkTarget.Vhost.Scsi;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlkTarget.Vhost.Tests.Scsi;

/// <summary>What the guest finds in virtio_scsi_cmd_resp and its data-in buffer after a command.</summary>
internal sealed record ScsiResult(byte Response, byte Status, int SenseLength, uint Resid, byte[] Sense, byte[] Data, uint UsedLength)
{
    public byte Key => (byte)(Sense[2] & 0x0f);
    public byte Asc => Sense[12];
    public byte Ascq => Sense[13];
    public bool IsGood => Response == VirtioScsi.Ok && Status == ScsiStatus.Good;

    public void AssertGood() => Assert.True(IsGood, $"response {Response} status {Status} sense {Key:x}/{Asc:x2}/{Ascq:x2}");

    public void AssertCheck(SenseCode expected)
    {
        Assert.Equal(VirtioScsi.Ok, Response);
        Assert.Equal(ScsiStatus.CheckCondition, Status);
        Assert.Equal(SenseCode.FixedLength, SenseLength);
        Assert.Equal(0x70, Sense[0]);
        Assert.Equal(expected, new SenseCode(Key, Asc, Ascq));
    }
}

/// <summary>
/// Plays the virtio-scsi guest driver on a request queue (index 2) over RAM LUNs: builds virtio_scsi_cmd_req
/// chains with data-out/data-in buffers, runs the queue once and decodes the response.
/// </summary>
internal sealed unsafe class ScsiHarness : IDisposable
{
    private const ushort Next = VirtqDescriptor.FlagNext;
    private const ushort Write = VirtqDescriptor.FlagWrite;
    public readonly TestRing Ring = new(size: 128);
    public readonly IoContext Io = new();
    public readonly List<IBlockDevice> Disks = [];
    public readonly ScsiDeviceContext Device;
    public readonly ScsiRequestQueue Queue;
    private ushort _next;

    /// <summary>Completes one request a deferring backend holds; false when it holds none.</summary>
    public Func<bool>? Settle;

    /// <summary>How long <see cref="Run"/> keeps polling a request another queue makes wait (a COMPARE AND WRITE
    /// gate); zero: one poll.</summary>
    public TimeSpan Patience;

    public ScsiHarness(Func<List<IBlockDevice>, IReadOnlyList<ScsiLunDefinition>>? luns = null, int requestQueues = 1, ILogger? log = null,
        string name = "test-scsi", DirtyLog? dirtyLog = null)
    {
        var definitions = luns?.Invoke(Disks) ?? DefaultLuns(Disks);
        Device = new ScsiDeviceContext(name, definitions, new ScsiOptions { RequestQueues = requestQueues });
        Queue = new ScsiRequestQueue(new QueueStartInfo(VirtioScsi.FirstRequestQueue, Ring.CreateRing(), Ring.Memory.Memory, 0, -1, -1, Io, dirtyLog), Device,
            log ?? NullLogger.Instance);
    }

    public const ulong DiskBytes = 1 << 20;

    public static IReadOnlyList<ScsiLunDefinition> DefaultLuns(List<IBlockDevice> disks)
    {
        var disk = new RamDisk(DiskBytes);
        disks.Add(disk);
        return [new ScsiLunDefinition(0, 0, disk, "SERIAL-0")];
    }

    public static byte[] Lun(byte target, ushort lun)
    {
        var l = new byte[8];
        l[0] = 1;
        l[1] = target;
        Span<byte> single = stackalloc byte[8];
        ScsiAddress.EncodeLun(lun, single);
        single[..2].CopyTo(l.AsSpan(2));
        return l;
    }

    /// <summary>Which descriptor layout a test wants.</summary>
    public sealed record Layout
    {
        public int ResponseLength { get; init; } = VirtioScsi.ResponseHeaderLength + VirtioScsi.DefaultSenseSize;
        /// <summary>Split the request header over two descriptors at this offset (0: one descriptor).</summary>
        public int SplitHeaderAt { get; init; }
        /// <summary>Put data-in into the same descriptor as the response.</summary>
        public bool DataInWithResponse { get; init; }
        /// <summary>Bytes of request actually given (default: header + 32-byte CDB).</summary>
        public int? RequestLength { get; init; }
    }

    /// <summary>A request made available to the queue: where its response and data-in land.</summary>
    public sealed record Request(List<(ulong Gpa, uint Len, bool Writable)> Buffers, ulong Resp, int ResponseLength, ulong DataGpa, int DataIn)
    {
        public ushort Head { get; set; }
    }

    public ScsiResult Run(byte[] cdb, byte[]? dataOut = null, int dataIn = 0, byte target = 0, ushort lun = 0, byte[]? lunBytes = null, Layout? layout = null)
    {
        // Long-running tests issue many commands: every earlier one has completed, so its buffers may be reused.
        if (Ring.DataUsed > 8 << 20 && _outstanding == 0) Ring.RewindData();
        var request = Prepare(cdb, dataOut, dataIn, target, lun, lunBytes, layout);
        var (ok, used) = Submit(request.Buffers);
        Assert.True(ok, "the request was not completed");
        return Decode(request, used);
    }

    private int _outstanding;
    private readonly Dictionary<ushort, uint> _completed = [];
    private ushort _usedSeen;

    /// <summary>Makes a request available and polls once, without waiting for it (see <see cref="IsDone"/>, <see cref="Collect"/>).</summary>
    public Request Start(byte[] cdb, byte[]? dataOut = null, int dataIn = 0)
    {
        var request = Prepare(cdb, dataOut, dataIn, 0, 0, null, null);
        if (_next + request.Buffers.Count > Ring.Size) _next = 0;
        request.Head = _next;
        Chain(request.Buffers);
        _outstanding++;
        Ring.MakeAvailable(request.Head);
        Queue.Poll();
        return request;
    }

    /// <summary>Polls the queue once and says whether <paramref name="request"/> has been completed.</summary>
    public bool IsDone(Request request)
    {
        Queue.Poll();
        for (; _usedSeen != Ring.UsedIdx; _usedSeen++)
        {
            var element = Ring.Used(_usedSeen);
            _completed[(ushort)element.Id] = element.Len;
        }
        return _completed.ContainsKey(request.Head);
    }

    /// <summary>The outcome of a completed <paramref name="request"/>.</summary>
    public ScsiResult Collect(Request request)
    {
        Assert.True(IsDone(request), $"request {request.Head} was not completed");
        _completed.Remove(request.Head, out uint used);
        _outstanding--;
        return Decode(request, used);
    }

    private Request Prepare(byte[] cdb, byte[]? dataOut, int dataIn, byte target, ushort lun, byte[]? lunBytes, Layout? layout)
    {
        layout ??= new Layout();
        int requestLength = layout.RequestLength ?? VirtioScsi.RequestHeaderLength + VirtioScsi.DefaultCdbSize;
        ulong req = Ring.Allocate((uint)Math.Max(requestLength, 64));
        var r = Ring.Bytes(req, Math.Max(requestLength, 64));
        r.Clear();
        (lunBytes ?? Lun(target, lun)).CopyTo(r);
        BinaryPrimitives.WriteUInt64LittleEndian(r[8..], 0x1234);
        cdb.CopyTo(r[VirtioScsi.RequestHeaderLength..]);
        var buffers = new List<(ulong Gpa, uint Len, bool Writable)>();
        if (layout.SplitHeaderAt > 0)
        {
            buffers.Add((req, (uint)layout.SplitHeaderAt, false));
            buffers.Add((req + (ulong)layout.SplitHeaderAt, (uint)(requestLength - layout.SplitHeaderAt), false));
        }
        else if (requestLength > 0)
        {
            buffers.Add((req, (uint)requestLength, false));
        }
        if (dataOut is { Length: > 0 })
        {
            ulong d = Ring.Allocate((uint)dataOut.Length, 512);
            dataOut.CopyTo(Ring.Bytes(d, dataOut.Length));
            buffers.Add((d, (uint)dataOut.Length, false));
        }
        ulong resp = Ring.Allocate((uint)(layout.ResponseLength + dataIn), 512);
        Ring.Bytes(resp, layout.ResponseLength + dataIn).Fill(0xee);
        ulong dataGpa = resp + (ulong)layout.ResponseLength;
        if (layout.DataInWithResponse)
        {
            buffers.Add((resp, (uint)(layout.ResponseLength + dataIn), true));
        }
        else
        {
            if (layout.ResponseLength > 0) buffers.Add((resp, (uint)layout.ResponseLength, true));
            if (dataIn > 0) buffers.Add((dataGpa, (uint)dataIn, true));
        }
        return new Request(buffers, resp, layout.ResponseLength, dataGpa, dataIn);
    }

    private ScsiResult Decode(Request request, uint used)
    {
        var respBytes = Ring.Bytes(request.Resp, Math.Max(request.ResponseLength, VirtioScsi.ResponseHeaderLength));
        var sense = new byte[VirtioScsi.MaxSenseSize];
        int senseLength = (int)BinaryPrimitives.ReadUInt32LittleEndian(respBytes);
        respBytes[VirtioScsi.ResponseHeaderLength..Math.Max(request.ResponseLength, VirtioScsi.ResponseHeaderLength)].CopyTo(sense);
        return new ScsiResult(respBytes[11], respBytes[10], senseLength, BinaryPrimitives.ReadUInt32LittleEndian(respBytes[4..]), sense,
            Ring.Bytes(request.DataGpa, request.DataIn).ToArray(), used);
    }

    private void Chain(List<(ulong Gpa, uint Len, bool Writable)> buffers)
    {
        for (int i = 0; i < buffers.Count; i++)
        {
            var (gpa, len, writable) = buffers[i];
            bool last = i == buffers.Count - 1;
            Ring.SetDescriptor(_next, gpa, len, (ushort)((writable ? Write : 0) | (last ? 0 : Next)), (ushort)(_next + 1));
            _next++;
        }
    }

    /// <summary>Makes a chain available and polls once; false when nothing was completed.</summary>
    public (bool Completed, uint Used) Submit(List<(ulong Gpa, uint Len, bool Writable)> buffers)
    {
        if (_next + buffers.Count > Ring.Size) _next = 0;
        ushort head = _next;
        Chain(buffers);
        ushort usedBefore = Ring.UsedIdx;
        Ring.MakeAvailable(head);
        Queue.Poll();
        // Backends that complete later: let them complete one request at a time, polling after each.
        while (Ring.UsedIdx == usedBefore && Settle is { } settle && settle()) Queue.Poll();
        for (var wait = System.Diagnostics.Stopwatch.StartNew(); Ring.UsedIdx == usedBefore && wait.Elapsed < Patience;) Queue.Poll();
        // Work on a helper thread (PERSISTENT RESERVE OUT with APTPL or PREEMPT AND ABORT) completes through the IoContext.
        for (var wait = System.Diagnostics.Stopwatch.StartNew(); Ring.UsedIdx == usedBefore && Io.InFlight > 0 && wait.Elapsed < TimeSpan.FromSeconds(10);)
        {
            Thread.Sleep(1);
            Io.Poll();
            Queue.Poll();
        }
        if (Ring.UsedIdx == usedBefore) return (false, 0);
        var element = Ring.Used(usedBefore);
        Assert.Equal(head, (ushort)element.Id);
        _usedSeen = Ring.UsedIdx;
        return (true, element.Len);
    }

    public void Dispose()
    {
        Queue.Dispose();
        foreach (var d in Disks) d.Dispose();
        Io.Dispose();
        Ring.Dispose();
    }
}

/// <summary>CDB builders (big-endian fields).</summary>
internal static class Cdbs
{
    public static byte[] Make(int length, byte opcode, Action<byte[]>? fill = null)
    {
        var c = new byte[length];
        c[0] = opcode;
        fill?.Invoke(c);
        return c;
    }

    public static byte[] Rw10(byte opcode, uint lba, ushort blocks, byte flags = 0) => Make(10, opcode, c =>
    {
        c[1] = flags;
        BinaryPrimitives.WriteUInt32BigEndian(c.AsSpan(2), lba);
        BinaryPrimitives.WriteUInt16BigEndian(c.AsSpan(7), blocks);
    });

    public static byte[] Rw16(byte opcode, ulong lba, uint blocks, byte flags = 0) => Make(16, opcode, c =>
    {
        c[1] = flags;
        BinaryPrimitives.WriteUInt64BigEndian(c.AsSpan(2), lba);
        BinaryPrimitives.WriteUInt32BigEndian(c.AsSpan(10), blocks);
    });

    public static byte[] Rw12(byte opcode, uint lba, uint blocks) => Make(12, opcode, c =>
    {
        BinaryPrimitives.WriteUInt32BigEndian(c.AsSpan(2), lba);
        BinaryPrimitives.WriteUInt32BigEndian(c.AsSpan(6), blocks);
    });

    public static byte[] Rw6(byte opcode, uint lba, byte blocks) => Make(6, opcode, c =>
    {
        c[1] = (byte)(lba >> 16 & 0x1f);
        c[2] = (byte)(lba >> 8);
        c[3] = (byte)lba;
        c[4] = blocks;
    });

    public static byte[] Inquiry(bool evpd = false, byte page = 0, ushort allocation = 255) => Make(6, ScsiOp.Inquiry, c =>
    {
        c[1] = evpd ? (byte)1 : (byte)0;
        c[2] = page;
        BinaryPrimitives.WriteUInt16BigEndian(c.AsSpan(3), allocation);
    });

    public static byte[] ReadCapacity16(uint allocation = 32) => Make(16, ScsiOp.ServiceActionIn16, c =>
    {
        c[1] = ScsiOp.SaReadCapacity16;
        BinaryPrimitives.WriteUInt32BigEndian(c.AsSpan(10), allocation);
    });

    public static byte[] Unmap(ushort parameterLength) => Make(10, ScsiOp.Unmap, c => BinaryPrimitives.WriteUInt16BigEndian(c.AsSpan(7), parameterLength));

    public static byte[] UnmapParameters(params (ulong Lba, uint Blocks)[] ranges)
    {
        var p = new byte[8 + 16 * ranges.Length];
        BinaryPrimitives.WriteUInt16BigEndian(p, (ushort)(p.Length - 2));
        BinaryPrimitives.WriteUInt16BigEndian(p.AsSpan(2), (ushort)(16 * ranges.Length));
        for (int i = 0; i < ranges.Length; i++)
        {
            BinaryPrimitives.WriteUInt64BigEndian(p.AsSpan(8 + 16 * i), ranges[i].Lba);
            BinaryPrimitives.WriteUInt32BigEndian(p.AsSpan(16 + 16 * i), ranges[i].Blocks);
        }
        return p;
    }

    public static byte[] ModeSense10(byte page, byte pageControl = 0, bool dbd = false, bool llbaa = false, byte subpage = 0) => Make(10, ScsiOp.ModeSense10, c =>
    {
        c[1] = (byte)((dbd ? 0x08 : 0) | (llbaa ? 0x10 : 0));
        c[2] = (byte)(pageControl << 6 | page);
        c[3] = subpage;
        BinaryPrimitives.WriteUInt16BigEndian(c.AsSpan(7), 1024);
    });

    public static byte[] ModeSense6(byte page, bool dbd = false) => Make(6, ScsiOp.ModeSense6, c =>
    {
        c[1] = dbd ? (byte)0x08 : (byte)0;
        c[2] = page;
        c[4] = 255;
    });

    public static byte[] ReportLuns(uint allocation = 1024, byte select = 0) => Make(12, ScsiOp.ReportLuns, c =>
    {
        c[2] = select;
        BinaryPrimitives.WriteUInt32BigEndian(c.AsSpan(6), allocation);
    });
}
