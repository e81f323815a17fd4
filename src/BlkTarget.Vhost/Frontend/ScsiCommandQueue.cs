using System.Buffers.Binary;
using BlkTarget.Vhost.Scsi;

namespace BlkTarget.Vhost.Frontend;

/// <summary>One finished virtio-scsi command: the virtio response code, the SCSI status, the sense data the
/// device returned (empty without CHECK CONDITION), the residual and the used length.</summary>
public sealed record ScsiCompletion(byte Response, byte Status, byte[] Sense, uint Resid, uint UsedLength)
{
    public bool IsGood => Response == VirtioScsi.Ok && Status == ScsiStatus.Good;
    public SenseCode SenseCode => Sense.Length >= 14 ? new SenseCode((byte)(Sense[2] & 0x0f), Sense[12], Sense[13]) : SenseCode.None;
}

/// <summary>
/// virtio-scsi commands over one request <see cref="QueueDriver"/> (queue 2 and up), for tests and tools:
/// a virtio_scsi_cmd_req (default 32-byte CDB) and a virtio_scsi_cmd_resp (default 96-byte sense) per request
/// slot, preallocated in the arena, plus the caller's data-out and data-in buffers.
/// </summary>
public sealed unsafe class ScsiCommandQueue
{
    private const int RequestBytes = VirtioScsi.RequestHeaderLength + VirtioScsi.DefaultCdbSize;
    private const int ResponseBytes = VirtioScsi.ResponseHeaderLength + VirtioScsi.DefaultSenseSize;
    private const int SlotBytes = 192;
    private readonly GuestBuffer _slots;

    public ScsiCommandQueue(QueueDriver queue, GuestMemoryArena arena)
    {
        Queue = queue;
        _slots = arena.Allocate((uint)(queue.Size * SlotBytes), 64);
    }

    public QueueDriver Queue { get; }

    /// <summary>The 8-byte virtio-scsi LUN field for a target and LUN (flat addressing above 255).</summary>
    public static byte[] Address(byte target, ushort lun)
    {
        Span<byte> encoded = stackalloc byte[8];
        ScsiAddress.EncodeLun(lun, encoded);
        return [1, target, encoded[0], encoded[1], 0, 0, 0, 0];
    }

    /// <summary>
    /// Sends one command and waits for its completion (only while nothing else is in flight on this queue):
    /// <paramref name="dataOut"/> buffers are device-readable, <paramref name="dataIn"/> device-writable.
    /// </summary>
    public ScsiCompletion Execute(byte target, ushort lun, ReadOnlySpan<byte> cdb, ReadOnlySpan<GuestBuffer> dataOut = default,
        ReadOnlySpan<GuestBuffer> dataIn = default, bool indirect = false, TimeSpan? timeout = null) =>
        Execute(Address(target, lun), cdb, dataOut, dataIn, indirect, timeout);

    public ScsiCompletion Execute(ReadOnlySpan<byte> lunField, ReadOnlySpan<byte> cdb, ReadOnlySpan<GuestBuffer> dataOut,
        ReadOnlySpan<GuestBuffer> dataIn, bool indirect = false, TimeSpan? timeout = null)
    {
        if (cdb.Length > VirtioScsi.DefaultCdbSize) throw new ArgumentException("CDB longer than 32 bytes", nameof(cdb));
        if (Queue.InFlight != 0) throw new InvalidOperationException("Execute needs an idle queue");
        byte* slot = _slots.Pointer;
        var request = new Span<byte>(slot, RequestBytes);
        request.Clear();
        lunField[..8].CopyTo(request);
        cdb.CopyTo(request[VirtioScsi.RequestHeaderLength..]);
        var response = new Span<byte>(slot + 64, ResponseBytes);
        response.Fill(0xff);

        Span<VirtqBuffer> chain = stackalloc VirtqBuffer[dataOut.Length + dataIn.Length + 2];
        int n = 0;
        chain[n++] = new VirtqBuffer(_slots.Gpa, RequestBytes, Writable: false);
        foreach (var b in dataOut) chain[n++] = b.Readable;
        chain[n++] = new VirtqBuffer(_slots.Gpa + 64, ResponseBytes, Writable: true);
        foreach (var b in dataIn) chain[n++] = b.Writable;
        if (!Queue.TryAdd(chain, 0, indirect)) throw new InvalidOperationException("the queue has no room for the request");
        Queue.KickIfNeeded();

        long deadline = Environment.TickCount64 + (long)(timeout ?? TimeSpan.FromSeconds(10)).TotalMilliseconds;
        uint used;
        while (!Queue.TryGetUsed(out _, out used))
        {
            long left = deadline - Environment.TickCount64;
            if (left <= 0 || !Queue.WaitForUsed((int)left))
                throw new TimeoutException($"queue {Queue.Index}: no completion for SCSI command 0x{cdb[0]:x2}");
        }
        int senseLength = (int)Math.Min(BinaryPrimitives.ReadUInt32LittleEndian(response), (uint)VirtioScsi.DefaultSenseSize);
        return new ScsiCompletion(response[11], response[10], response.Slice(VirtioScsi.ResponseHeaderLength, senseLength).ToArray(),
            BinaryPrimitives.ReadUInt32LittleEndian(response[4..]), used);
    }

    /// <summary>Sends one control-queue request (TMF or AN) on <paramref name="control"/> (queue 0) and returns
    /// the response bytes (1 for TMF, 5 for AN).</summary>
    public static byte[] Control(QueueDriver control, GuestMemoryArena arena, ReadOnlySpan<byte> request, int responseLength, TimeSpan? timeout = null)
    {
        var req = arena.Allocate((uint)request.Length, 64);
        request.CopyTo(req.Span);
        var resp = arena.Allocate((uint)responseLength, 64);
        resp.Span.Fill(0xff);
        if (!control.TryAdd([req.Readable, resp.Writable], 0)) throw new InvalidOperationException("the control queue is full");
        control.KickIfNeeded();
        long deadline = Environment.TickCount64 + (long)(timeout ?? TimeSpan.FromSeconds(10)).TotalMilliseconds;
        while (!control.TryGetUsed(out _, out _))
        {
            long left = deadline - Environment.TickCount64;
            if (left <= 0 || !control.WaitForUsed((int)left)) throw new TimeoutException("no control queue completion");
        }
        return resp.Span.ToArray();
    }
}
