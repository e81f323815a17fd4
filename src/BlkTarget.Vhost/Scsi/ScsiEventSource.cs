using System.Collections.Concurrent;
using BlkTarget.Storage;

namespace BlkTarget.Vhost.Scsi;

/// <summary>One virtio-scsi event (virtio 1.2 5.6.6.3): <c>event</c>, the 8-byte <c>lun</c> it concerns (target
/// and LUN), and <c>reason</c>.</summary>
public readonly record struct ScsiEvent(uint Type, byte Target, ushort Lun, uint Reason)
{
    /// <summary>A LUN appeared (TRANSPORT_RESET, RESCAN): the driver adds the device.</summary>
    public static ScsiEvent LunAdded(byte target, ushort lun) => new(VirtioScsi.EventTransportReset, target, lun, VirtioScsi.ResetReasonRescan);

    /// <summary>A LUN went away (TRANSPORT_RESET, REMOVED): the driver removes the device.</summary>
    public static ScsiEvent LunRemoved(byte target, ushort lun) => new(VirtioScsi.EventTransportReset, target, lun, VirtioScsi.ResetReasonRemoved);

    /// <summary>A parameter changed (PARAM_CHANGE); the reason carries the unit attention's ASC (bits 0-7) and
    /// ASCQ (bits 8-15). Linux rescans the device for 2Ah/09h (CAPACITY DATA HAS CHANGED).</summary>
    public static ScsiEvent ParameterChanged(byte target, ushort lun, SenseCode attention) =>
        new(VirtioScsi.EventParamChange, target, lun, attention.Asc | ((uint)attention.Ascq << 8));

    /// <summary>Writes struct virtio_scsi_event (16 bytes, little-endian) into <paramref name="destination"/>.</summary>
    public void Write(Span<byte> destination, bool eventsMissed)
    {
        destination[..VirtioScsi.EventInfoSize].Clear();
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(destination, Type | (eventsMissed ? VirtioScsi.EventsMissed : 0));
        destination[4] = 1;
        destination[5] = Target;
        // The REPORT LUNS encoding (QEMU's too): peripheral addressing below 256, flat above. Linux takes
        // lun[2] << 8 | lun[3] as the LUN number, so a flat-addressing bit on a small LUN would name another LUN.
        destination[6] = Lun >= 256 ? (byte)(0x40 | (Lun >> 8)) : (byte)0;
        destination[7] = (byte)Lun;
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(destination[12..], Reason);
    }
}

/// <summary>
/// Events the device has for the driver, from the management thread to the event queue's reactor. Posting wakes
/// that reactor; the queue delivers each event into the next buffer the driver posted. Events wait (up to
/// <see cref="Capacity"/>) while the driver has posted no buffer; beyond that they are dropped and the next
/// delivered event carries VIRTIO_SCSI_T_EVENTS_MISSED, after which the driver rescans. With no event queue
/// running (no driver), events are dropped: a driver that starts scans the bus anyway.
/// </summary>
public sealed class ScsiEventSource
{
    public const int Capacity = 64;

    private readonly ConcurrentQueue<ScsiEvent> _events = new();
    private IoContext? _reactor;
    private int _missed;

    /// <summary>Queues <paramref name="e"/> for the running event queue and wakes its reactor. Any thread.</summary>
    public void Post(ScsiEvent e)
    {
        var reactor = Volatile.Read(ref _reactor);
        if (reactor is null) return;
        if (_events.Count >= Capacity) Volatile.Write(ref _missed, 1);
        else _events.Enqueue(e);
        reactor.Wake();
    }

    /// <summary>True when an event (or the missed flag) waits.</summary>
    public bool Pending => !_events.IsEmpty || Volatile.Read(ref _missed) != 0;

    internal bool TryPeek(out ScsiEvent e) => _events.TryPeek(out e);

    internal void Dequeue() => _events.TryDequeue(out _);

    /// <summary>Takes the missed flag (true once per overflow).</summary>
    internal bool TakeMissed() => Interlocked.Exchange(ref _missed, 0) != 0;

    /// <summary>The event queue started on the reactor whose engine is <paramref name="reactor"/> (null: it stopped;
    /// what waits is dropped).</summary>
    internal void Attach(IoContext? reactor)
    {
        Volatile.Write(ref _reactor, reactor);
        if (reactor is null) _events.Clear();
    }
}
