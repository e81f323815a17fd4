using System.Buffers.Binary;
using System.Diagnostics;
using BlkTarget.Storage;
using BlkTarget.Vhost.Blk;
using BlkTarget.Vhost.Device;
using BlkTarget.Vhost.Queues;
using Microsoft.Extensions.Logging;

namespace BlkTarget.Vhost.Scsi;

/// <summary>
/// The virtio-scsi control queue: task management functions and asynchronous notification queries.
/// <para>
/// Task management with I/O in flight: commands run on other queues (other reactors) and a backend request
/// already handed to io_uring cannot be called back. So ABORT TASK, ABORT TASK SET, CLEAR TASK SET, LOGICAL
/// UNIT RESET and I_T NEXUS RESET wait until the LUN (or, for the nexus reset, every LUN of the target) has no
/// command in flight, and only then answer FUNCTION COMPLETE: every affected command has completed (with its
/// own status) before the TMF response, so none can complete after it, which is what the initiator relies on.
/// The wait is bounded (<see cref="TmfTimeout"/>); past it the answer is FAILURE and the initiator escalates.
/// QUERY TASK / QUERY TASK SET answer FUNCTION SUCCEEDED while the LUN has commands in flight, FUNCTION COMPLETE
/// otherwise; CLEAR ACA (no ACA support) and unknown functions are REJECTED.
/// </para>
/// <para>Asynchronous notification: we support no events, so AN_QUERY and AN_SUBSCRIBE answer OK with
/// event_actual 0.</para>
/// </summary>
public sealed unsafe class ScsiControlQueue : VirtqueueWorker
{
    public static readonly TimeSpan TmfTimeout = TimeSpan.FromSeconds(30);

    private struct Waiting
    {
        public ushort Head;
        public IoVec* Segments;
        public int WritableStart;
        public int WritableEnd;
        public ScsiLun? Lun;
        public ScsiTargetNode? Target;
        public long Deadline;
    }

    private readonly ScsiDeviceContext _device;
    private readonly Waiting[] _waiting;
    private int _waitingCount;

    public ScsiControlQueue(QueueStartInfo start, ScsiDeviceContext device, ILogger log) : base(start, device.Name, log)
    {
        _device = device;
        _waiting = new Waiting[Ring.Size];
    }

    protected override bool HasDeferredWork => _waitingCount > 0;

    protected override void Process(ushort head, ref ChainBuffers chain)
    {
        IoVec* segments = chain.Segments;
        if (chain.WritableBytes == 0 || chain.Overflowed && chain.WritableCount == 0)
        {
            Abandon(head, $"control request at descriptor {head} has no writable response");
            return;
        }
        Span<byte> request = stackalloc byte[VirtioScsi.TmfRequestLength];
        request.Clear();
        var cursor = new SegmentCursor(segments, 0, chain.ReadableCount);
        int length = cursor.CopyTo(request);
        uint type = length >= 4 ? BinaryPrimitives.ReadUInt32LittleEndian(request) : uint.MaxValue;
        switch (type)
        {
            case VirtioScsi.TypeTmf when length >= VirtioScsi.TmfRequestLength:
                TaskManagement(head, segments, chain, request);
                return;
            case VirtioScsi.TypeAnQuery or VirtioScsi.TypeAnSubscribe when length >= VirtioScsi.AnRequestLength:
            {
                var address = ScsiAddress.Parse(request.Slice(4, 8));
                bool present = address.Valid && _device.FindTarget(address.Target) is not null;
                Span<byte> response = stackalloc byte[VirtioScsi.AnResponseLength];
                response.Clear();                            // event_actual: none
                response[4] = present ? VirtioScsi.Ok : VirtioScsi.BadTarget;
                Respond(head, segments, chain.ReadableCount, chain.Count, response);
                return;
            }
            default:
                // Unknown type or a short request: the first response byte carries the failure.
                Respond(head, segments, chain.ReadableCount, chain.Count, [VirtioScsi.Failure]);
                return;
        }
    }

    private void TaskManagement(ushort head, IoVec* segments, in ChainBuffers chain, ReadOnlySpan<byte> request)
    {
        uint subtype = BinaryPrimitives.ReadUInt32LittleEndian(request[4..]);
        var address = ScsiAddress.Parse(request.Slice(8, 8));
        var target = address.Valid ? _device.FindTarget(address.Target) : null;
        var lun = target is not null && address.Lun != ushort.MaxValue ? target.Find(address.Lun) : null;
        byte response;
        if (target is null) response = VirtioScsi.BadTarget;
        else switch (subtype)
        {
            case VirtioScsi.TmfITNexusReset:
                Wait(head, segments, chain, null, target);
                return;
            case VirtioScsi.TmfAbortTask or VirtioScsi.TmfAbortTaskSet or VirtioScsi.TmfClearTaskSet or VirtioScsi.TmfLogicalUnitReset:
                if (lun is null)
                {
                    response = VirtioScsi.IncorrectLun;
                    break;
                }
                Log.LogInformation("{Device}: task management function {Function} on target {Target} LUN {Lun} ({InFlight} command(s) in flight)",
                    _device.Name, subtype, target.Id, lun.Lun, lun.InFlight);
                Wait(head, segments, chain, lun, target);
                return;
            case VirtioScsi.TmfQueryTask or VirtioScsi.TmfQueryTaskSet:
                response = lun is null ? VirtioScsi.IncorrectLun
                    : lun.InFlight > 0 ? VirtioScsi.FunctionSucceeded : VirtioScsi.FunctionComplete;
                break;
            default:
                response = VirtioScsi.FunctionRejected;
                break;
        }
        Respond(head, segments, chain.ReadableCount, chain.Count, [response]);
    }

    private void Wait(ushort head, IoVec* segments, in ChainBuffers chain, ScsiLun? lun, ScsiTargetNode target)
    {
        _waiting[_waitingCount++] = new Waiting
        {
            Head = head,
            Segments = segments,
            WritableStart = chain.ReadableCount,
            WritableEnd = chain.Count,
            Lun = lun,
            Target = target,
            Deadline = Stopwatch.GetTimestamp() + (long)(TmfTimeout.TotalSeconds * Stopwatch.Frequency),
        };
        PollDeferred();
    }

    protected override int PollDeferred()
    {
        int done = 0;
        for (int i = 0; i < _waitingCount;)
        {
            ref Waiting w = ref _waiting[i];
            bool drained = w.Lun is not null ? w.Lun.InFlight == 0 : w.Target!.Luns.All(l => l.InFlight == 0);
            bool expired = !drained && Stopwatch.GetTimestamp() > w.Deadline;
            if (!drained && !expired)
            {
                i++;
                continue;
            }
            if (expired) Log.LogWarning("{Device}: task management function gave up after {Seconds} s with commands still in flight", _device.Name, TmfTimeout.TotalSeconds);
            var finished = w;
            _waiting[i] = _waiting[--_waitingCount];
            Respond(finished.Head, finished.Segments, finished.WritableStart, finished.WritableEnd,
                [drained ? VirtioScsi.FunctionComplete : VirtioScsi.Failure]);
            done++;
        }
        return done;
    }

    private void Respond(ushort head, IoVec* segments, int start, int end, ReadOnlySpan<byte> response)
    {
        var cursor = new SegmentCursor(segments, start, end);
        int written = cursor.CopyFrom(response);
        CompleteRequest(head, (uint)written);
    }
}
