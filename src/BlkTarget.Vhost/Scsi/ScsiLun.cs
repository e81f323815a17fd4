using System.Buffers.Binary;
using System.Text;
using BlkTarget.Storage;
using BlkTarget.Vhost.Scsi.Atomicity;
using BlkTarget.Vhost.Scsi.Reservations;
using BlkTarget.Vhost.Stats;

namespace BlkTarget.Vhost.Scsi;

/// <summary>Per-command limits a LUN advertises in its block limits VPD page and enforces (counts of logical blocks).</summary>
public sealed record ScsiLimits(uint MaxTransferBlocks, uint MaxUnmapBlocks, uint MaxUnmapDescriptors, uint MaxWriteSameBlocks,
    uint UnmapGranularityBlocks = 1, byte MaxCompareAndWriteBlocks = 0)
{
    /// <summary>
    /// MAXIMUM COMPARE AND WRITE LENGTH (VPD B0h byte 5, one byte): what fits the queue's 64 KiB compare buffer, 128
    /// blocks of 512 bytes or 16 of 4 KiB. Its users take a lock with one block (VMware's ATS, cluster file systems'
    /// heartbeats); a longer COMPARE AND WRITE holds its range against every writer of the disk for longer, and each
    /// request queue keeps one such buffer.
    /// </summary>
    public static byte CompareAndWriteBlocksFor(uint blockSize) => (byte)Math.Min(255u, CompareAndWriteRunner.BufferBytes / blockSize);

    public static ScsiLimits For(uint blockSize) =>
        new((8u << 20) / blockSize, (1u << 30) / blockSize, 32, (1u << 30) / blockSize, 1, CompareAndWriteBlocksFor(blockSize));

    /// <summary>Our limits for a LUN, narrowed to what its medium takes in one request and in the unit it deallocates.</summary>
    public static ScsiLimits For(BlockDeviceInfo info)
    {
        var ours = For(info.BlockSize);
        return ours with
        {
            MaxUnmapBlocks = Narrow(ours.MaxUnmapBlocks, info.MaxDiscardBytes / info.BlockSize),
            MaxWriteSameBlocks = Narrow(ours.MaxWriteSameBlocks, info.MaxWriteZeroesBytes / info.BlockSize),
            UnmapGranularityBlocks = Math.Max(1, info.DiscardGranularity / info.BlockSize),
        };
    }

    /// <summary>The medium's limit where it has one (non-zero) and it is lower than ours.</summary>
    private static uint Narrow(uint ours, ulong medium) => medium == 0 ? ours : (uint)Math.Min(ours, medium);
}

/// <summary>
/// One logical unit: a block backend seen as a SCSI direct-access device. Emulates the SPC/SBC commands and maps
/// READ/WRITE/SYNCHRONIZE CACHE/UNMAP/WRITE SAME onto block requests on the calling queue's channel. Shared by
/// every request queue of the device; the only mutable state (WCE, in-flight counts) is safe across reactors.
/// </summary>
public sealed class ScsiLun
{
    /// <summary>Longs between two queues' in-flight counters (a cache line each).</summary>
    private const int CounterStride = 16;
    private readonly long[] _inFlight;
    private volatile bool _writeCache;
    /// <summary>Stopped by START STOP UNIT (SBC-3 5.25, 4.19): read on every queue's reactor, written by the command.
    /// Volatile is enough: a command the guest sends after it saw the STOP (or START) complete reads the new value
    /// (the completion is published after the write, the next request read after the guest's), and commands that
    /// race with it are unordered anyway (SAM-5: SIMPLE tasks).</summary>
    private volatile bool _stopped;
    private readonly string _deviceName;
    private readonly PersistentReservationState _reservations;
    /// <summary>The I_T nexus of the connected frontend (a new one per session).</summary>
    private volatile ScsiNexus _nexus;

    public ScsiLun(int index, byte target, ushort lun, IBlockDevice backend, string deviceName, string serial, bool writeCache, int requestQueues,
        SharedLogicalUnit shared)
    {
        Shared = shared;
        _reservations = shared.Reservations;
        _deviceName = deviceName;
        RelativeTargetPort = shared.TargetPortFor(deviceName);
        _nexus = ScsiNexus.ForSession(deviceName, 0, this);
        Index = index;
        Target = target;
        Lun = lun;
        Backend = backend;
        Serial = serial;
        DefaultWriteCache = writeCache;
        _writeCache = writeCache;
        var info = backend.Info;
        Limits = ScsiLimits.For(info);
        // UNMAP exists to give space back: a medium that cannot deallocate gets no UNMAP at all, or a guest's fstrim
        // would have it write zeros over all its free space.
        Provisioning = info.SupportsDiscard && !info.ReadOnly;
        UnmapReadsZeros = Provisioning && info.SupportsWriteZeroes && info.ZeroesCanUnmap;
        NaaIdentifier = MakeNaa($"{deviceName}/{serial}/{target}/{lun}");
        _inFlight = new long[Math.Max(1, requestQueues) * CounterStride];
        Counters = QueueCounterSet.Create(requestQueues);
    }

    /// <summary>Request statistics per request queue (0-based), for this LUN's lifetime.</summary>
    public IReadOnlyList<QueueCounters> Counters { get; }

    /// <summary>Position in the device's LUN list (indexes per-queue channels).</summary>
    public int Index { get; }
    public byte Target { get; }
    public ushort Lun { get; }
    public IBlockDevice Backend { get; }
    /// <summary>QoS limits of the disk behind this LUN (shared with every other export of the disk); null: none.</summary>
    public Qos.QosLimiter? DiskQos { get; init; }
    /// <summary>The backend as it is now (its size grows with <see cref="IBlockDevice.Resize"/>).</summary>
    public BlockDeviceInfo Info => Backend.Info;
    public string Serial { get; }
    public ScsiLimits Limits { get; }
    /// <summary>Logical block provisioning (LBPME): UNMAP and WRITE SAME with UNMAP may deallocate.</summary>
    public bool Provisioning { get; }
    /// <summary>Unmapped blocks read as zeros (LBPRZ): UNMAP is a write-zeroes that may deallocate. Only where that
    /// costs no written zeros; otherwise UNMAP is a plain discard, a hint after which the blocks' contents are
    /// undefined.</summary>
    public bool UnmapReadsZeros { get; }
    public bool ReadOnly => Info.ReadOnly;
    public ulong NaaIdentifier { get; }
    public bool DefaultWriteCache { get; }
    /// <summary>The logical unit state every export of this disk shares (persistent reservations).</summary>
    public SharedLogicalUnit Shared { get; }
    /// <summary>RELATIVE TARGET PORT IDENTIFIER of the export this LUN is reached through (VPD 83h, READ FULL STATUS):
    /// distinct for each export of a shared disk (<see cref="SharedLogicalUnit.TargetPortFor"/>).</summary>
    public ushort RelativeTargetPort { get; }
    /// <summary>The I_T nexus commands to this LUN come on now.</summary>
    public ScsiNexus Nexus => _nexus;

    /// <summary>Session <paramref name="session"/> of the export begins: a new I_T nexus; the previous one keeps its
    /// registrations (SPC-4: they survive the loss of the nexus) but no connection.</summary>
    public void BeginNexus(int session)
    {
        var previous = _nexus;
        _nexus = ScsiNexus.ForSession(_deviceName, session, this);
        previous.Detach();
    }

    /// <summary>WCE of the caching mode page: off makes every write FUA. The guest's MODE SELECT choice lasts
    /// until <see cref="ResetWriteCache"/> (device reset).</summary>
    public bool WriteCacheEnabled
    {
        get => _writeCache;
        set => _writeCache = value;
    }

    /// <summary>Back to the configured WCE (<see cref="DefaultWriteCache"/>), as after a device reset.</summary>
    public void ResetWriteCache() => _writeCache = DefaultWriteCache;

    /// <summary>Whether START STOP UNIT stopped the LUN: media access then ends in NOT READY, LOGICAL UNIT NOT
    /// READY, INITIALIZING COMMAND REQUIRED until a START. A device reset (power on) starts it again.</summary>
    public bool Stopped
    {
        get => _stopped;
        set => _stopped = value;
    }

    /// <summary>Commands that access the medium, refused while the LUN is stopped (SBC-3 4.19: the LU is not
    /// ready; SPC-4 5.12 lets INQUIRY, REPORT LUNS, REQUEST SENSE, MODE SENSE/SELECT, READ CAPACITY, START STOP
    /// UNIT, REPORT SUPPORTED OPERATION CODES and PERSISTENT RESERVE IN/OUT through).</summary>
    public static bool AccessesMedium(byte opcode) => opcode is ScsiOp.TestUnitReady
        or ScsiOp.Read6 or ScsiOp.Read10 or ScsiOp.Read12 or ScsiOp.Read16
        or ScsiOp.Write6 or ScsiOp.Write10 or ScsiOp.Write12 or ScsiOp.Write16
        or ScsiOp.SynchronizeCache10 or ScsiOp.SynchronizeCache16 or ScsiOp.WriteSame10 or ScsiOp.WriteSame16 or ScsiOp.Unmap
        or ScsiOp.CompareAndWrite;

    /// <summary>NAA 3 (locally assigned) identifier: 60 bits of a 64-bit FNV-1a hash of the device name, serial
    /// and address, so it is the same every time the same export is served.</summary>
    public static ulong MakeNaa(string key)
    {
        ulong hash = 0xcbf29ce484222325;
        foreach (byte b in Encoding.UTF8.GetBytes(key))
        {
            hash ^= b;
            hash *= 0x100000001b3;
        }
        return (0x3UL << 60) | (hash & 0x0fff_ffff_ffff_ffff);
    }

    // ---- unit attentions (SAM-5 5.14; one I_T nexus per export at a time, so one set per LUN) ----

    /// <summary>Pending unit attention conditions, one bit each (<see cref="AttentionCapacity"/>, <see cref="AttentionLuns"/>).
    /// Raised by the management thread, reported and cleared by whichever queue's command comes first.</summary>
    private int _attentions;
    public const int AttentionCapacity = 1;
    public const int AttentionLuns = 2;

    /// <summary>Establishes a unit attention condition (<see cref="AttentionCapacity"/>, <see cref="AttentionLuns"/>). Any thread.</summary>
    public void RaiseAttention(int condition) => Interlocked.Or(ref _attentions, condition);

    /// <summary>Takes one pending unit attention (lowest bit first): one volatile read when there is none.</summary>
    private bool TakeAttention(out SenseCode sense)
    {
        sense = default;
        while (true)
        {
            int pending = Volatile.Read(ref _attentions);
            if (pending == 0) return false;
            int bit = pending & -pending;
            if (Interlocked.CompareExchange(ref _attentions, pending & ~bit, pending) != pending) continue;
            sense = bit == AttentionCapacity ? SenseCode.CapacityDataHasChanged : SenseCode.ReportedLunsDataHasChanged;
            return true;
        }
    }

    private bool TakeAnyAttention(Reservations.ScsiNexus nexus, out SenseCode sense)
    {
        if (TakeAttention(out sense)) return true;
        if (!nexus.HasUnitAttention) return false;
        sense = nexus.TakeUnitAttention();
        return sense != SenseCode.None;
    }

    /// <summary>Clears the attention conditions a device reset (a new initiator) makes moot.</summary>
    public void ClearAttentions() => Volatile.Write(ref _attentions, 0);

    // ---- in-flight accounting for task management (one counter per request queue, written by its reactor) ----

    public void AddInFlight(int queue, int delta)
    {
        ref long counter = ref _inFlight[queue * CounterStride];
        Volatile.Write(ref counter, counter + delta);
    }

    /// <summary>Commands of request queue <paramref name="queue"/> in flight on this LUN (read by that queue's reactor).</summary>
    public long InFlightOn(int queue) => Volatile.Read(ref _inFlight[queue * CounterStride]);

    public long InFlight
    {
        get
        {
            long sum = 0;
            for (int i = 0; i < _inFlight.Length; i += CounterStride) sum += Volatile.Read(ref _inFlight[i]);
            return sum;
        }
    }

    // ---- command execution ----

    /// <summary>Executes the command in <paramref name="task"/>: completes it (status, sense, data-in) or submits
    /// backend requests (<see cref="ScsiTask.Submitted"/> &gt; 0) whose completions finish it.</summary>
    public void Execute(ref ScsiTask task, ScsiTargetNode target)
    {
        var cdb = task.Cdb;
        byte opcode = cdb[0];
        int length = ScsiOp.CdbLength(opcode);
        if (length == 0)
        {
            task.Fail(SenseCode.InvalidOpcode);
            return;
        }
        if (length > cdb.Length || Cdb.HasNaca(cdb, length))
        {
            task.Fail(SenseCode.InvalidFieldInCdb);
            return;
        }
        var nexus = _nexus;
        // SAM-5 5.14: a pending unit attention is reported by the next command other than INQUIRY, REPORT LUNS and
        // REQUEST SENSE (which returns it as its data), and cleared: the LUN's own conditions (capacity, LUN
        // inventory: established for the export's one nexus) first, then the nexus's reservation ones.
        if (opcode is not (ScsiOp.Inquiry or ScsiOp.ReportLuns) && TakeAnyAttention(nexus, out var attention))
        {
            if (opcode == ScsiOp.RequestSense) RequestSense(ref task, attention);
            else task.Fail(attention);
            return;
        }
        if (_reservations.Current.Conflicts(nexus, cdb))
        {
            task.Status = ScsiStatus.ReservationConflict;
            return;
        }
        if (_stopped && AccessesMedium(opcode))
        {
            task.Fail(SenseCode.NotReadyInitializingCommandRequired);
            return;
        }
        switch (opcode)
        {
            case ScsiOp.Read6: case ScsiOp.Read10: case ScsiOp.Read12: case ScsiOp.Read16:
            case ScsiOp.Write6: case ScsiOp.Write10: case ScsiOp.Write12: case ScsiOp.Write16:
                ReadWrite(ref task);
                return;
            case ScsiOp.CompareAndWrite:
                CompareAndWrite(ref task);
                return;
            case ScsiOp.TestUnitReady:
                task.Good();
                return;
            case ScsiOp.Inquiry:
                Inquiry(ref task);
                return;
            case ScsiOp.RequestSense:
                // SPC-4 6.39: with no pending sense, the sense data describe the LU's current state.
                RequestSense(ref task, _stopped ? SenseCode.NotReadyInitializingCommandRequired : SenseCode.None);
                return;
            case ScsiOp.ReportLuns:
                Interlocked.And(ref _attentions, ~AttentionLuns);    // SPC-4 6.33: REPORT LUNS clears it
                target.ReportLuns(ref task);
                return;
            case ScsiOp.ReadCapacity10:
                ReadCapacity10(ref task);
                return;
            case ScsiOp.ServiceActionIn16:
                if ((cdb[1] & 0x1f) != ScsiOp.SaReadCapacity16) task.Fail(SenseCode.InvalidFieldInCdb);
                else ReadCapacity16(ref task);
                return;
            case ScsiOp.SynchronizeCache10:
            case ScsiOp.SynchronizeCache16:
                SynchronizeCache(ref task, opcode == ScsiOp.SynchronizeCache16);
                return;
            case ScsiOp.Unmap:
                Unmap(ref task);
                return;
            case ScsiOp.WriteSame10:
            case ScsiOp.WriteSame16:
                WriteSame(ref task, opcode == ScsiOp.WriteSame16);
                return;
            case ScsiOp.ModeSense6:
            case ScsiOp.ModeSense10:
                ModePages.Sense(ref task, this, opcode == ScsiOp.ModeSense10);
                return;
            case ScsiOp.ModeSelect6:
            case ScsiOp.ModeSelect10:
                ModePages.Select(ref task, this, opcode == ScsiOp.ModeSelect10);
                return;
            case ScsiOp.StartStopUnit:
                StartStopUnit(ref task);
                return;
            case ScsiOp.MaintenanceIn:
                if ((cdb[1] & 0x1f) != ScsiOp.SaReportSupportedOpcodes) task.Fail(SenseCode.InvalidFieldInCdb);
                else SupportedOpcodes.Report(ref task);
                return;
            case ScsiOp.PersistentReserveIn:
                PersistentReservations.In(ref task, _reservations);
                return;
            case ScsiOp.PersistentReserveOut:
                PersistentReservations.Out(ref task, Shared, nexus);
                return;
            default:
                task.Fail(SenseCode.InvalidOpcode);
                return;
        }
    }

    /// <summary>
    /// START STOP UNIT (SBC-3 5.25). POWER CONDITION 0h: START 1 starts the LU, START 0 stops it (media access
    /// then fails NOT READY until a START), after synchronizing the cache unless NO_FLUSH; LOEJ (load or eject) is
    /// refused, there is no removable medium. The power conditions ACTIVE, IDLE, STANDBY, LU_CONTROL,
    /// FORCE_IDLE_0 and FORCE_STANDBY_0 are accepted and change nothing (nothing spins; START and LOEJ are
    /// ignored with them, as the standard says); other values are reserved. IMMED 1: status as soon as the CDB is
    /// validated, so a stop then does not wait for the cache (nothing is lost: the cache is the host's and
    /// survives the stop); IMMED 0: after the synchronization.
    /// </summary>
    private void StartStopUnit(ref ScsiTask task)
    {
        var cdb = task.Cdb;
        bool immediate = (cdb[1] & 0x01) != 0;
        int powerCondition = cdb[4] >> 4;
        bool noFlush = (cdb[4] & 0x04) != 0;
        bool loadEject = (cdb[4] & 0x02) != 0;
        bool start = (cdb[4] & 0x01) != 0;
        if (powerCondition is 0x1 or 0x2 or 0x3 or 0x7 or 0xa or 0xb)
        {
            task.Good();
            return;
        }
        if (powerCondition != 0 || loadEject)
        {
            task.Fail(SenseCode.InvalidFieldInCdb);
            return;
        }
        _stopped = !start;
        task.Good();
        if (start || noFlush || immediate) return;
        task.Operation = BlockOperation.Flush;
        task.Submit(new BlockRequest { Operation = BlockOperation.Flush, Tag = task.Tag });
    }

    private bool InRange(ulong lba, ulong blocks)
    {
        ulong capacity = Info.BlockCount;
        return lba <= capacity && blocks <= capacity - lba;
    }

    /// <summary>The checks a command writing [<paramref name="lba"/>, +<paramref name="blocks"/>) makes first, in
    /// this order: a length the command refuses (<paramref name="lengthValid"/> false: INVALID FIELD IN CDB), a range
    /// beyond the capacity (LOGICAL BLOCK ADDRESS OUT OF RANGE), a read-only LUN (WRITE PROTECTED). False with the
    /// task failed.</summary>
    private bool AdmitWrite(ref ScsiTask task, ulong lba, ulong blocks, bool lengthValid)
    {
        if (!lengthValid) task.Fail(SenseCode.InvalidFieldInCdb);
        else if (!InRange(lba, blocks)) task.Fail(SenseCode.LbaOutOfRange);
        else if (ReadOnly) task.Fail(SenseCode.WriteProtected);
        else return true;
        return false;
    }

    private unsafe void ReadWrite(ref ScsiTask task)
    {
        if (!Cdb.TryDecodeReadWrite(task.Cdb, out ulong lba, out uint blocks, out bool fua))
        {
            task.Fail(SenseCode.InvalidFieldInCdb);
            return;
        }
        bool read = Cdb.IsRead(task.Cdb[0]);
        if (!InRange(lba, blocks))
        {
            task.Fail(SenseCode.LbaOutOfRange);
            return;
        }
        if (!read && ReadOnly)
        {
            task.Fail(SenseCode.WriteProtected);
            return;
        }
        ulong bytes = (ulong)blocks * Info.BlockSize;
        if (bytes > (read ? task.DataInBytes : task.DataOutBytes))
        {
            task.Overrun();
            return;
        }
        task.Good();
        if (bytes == 0) return;
        if (!read && !task.TryBeginWrite(Shared.Gate, new BlockRange(lba, blocks))) return;
        var request = new BlockRequest
        {
            Operation = read ? BlockOperation.Read : BlockOperation.Write,
            Flags = !read && (fua || !_writeCache) ? BlockRequestFlags.Fua : BlockRequestFlags.None,
            Offset = lba * Info.BlockSize,
            Length = bytes,
            Tag = task.Tag,
        };
        if (read)
        {
            request.Iov = task.DataIn;
            request.IovCount = ScsiTask.Trim(task.DataIn, task.DataInCount, bytes);
            task.DataInWritten = bytes;
        }
        else
        {
            request.Iov = task.DataOut;
            request.IovCount = ScsiTask.Trim(task.DataOut, task.DataOutCount, bytes);
            task.DataOutConsumed = bytes;
        }
        task.Operation = request.Operation;
        task.Submit(request);
    }

    private void Inquiry(ref ScsiTask task)
    {
        var cdb = task.Cdb;
        ulong allocation = Cdb.U16(cdb, 3);
        bool evpd = (cdb[1] & 0x01) != 0;
        if ((cdb[1] & 0x02) != 0 || (!evpd && cdb[2] != 0))
        {
            task.Fail(SenseCode.InvalidFieldInCdb);
            return;
        }
        int n = evpd ? InquiryData.Vpd(task.Scratch, cdb[2], this) : InquiryData.Standard(task.Scratch, present: true);
        if (n < 0) task.Fail(SenseCode.InvalidFieldInCdb);
        else task.ReturnData(task.Scratch[..n], allocation);
    }

    /// <summary>REQUEST SENSE: we always report sense with the failing command (autosense), so there is never
    /// pending sense: the answer is <paramref name="current"/> (NO SENSE for a present LUN). Fixed format only.</summary>
    public static void RequestSense(ref ScsiTask task, SenseCode current)
    {
        if ((task.Cdb[1] & 0x01) != 0)
        {
            task.Fail(SenseCode.InvalidFieldInCdb);
            return;
        }
        int n = current.WriteFixed(task.Scratch);
        task.ReturnData(task.Scratch[..n], task.Cdb[4]);
    }

    private void ReadCapacity10(ref ScsiTask task)
    {
        var cdb = task.Cdb;
        if ((cdb[8] & 0x01) == 0 && Cdb.U32(cdb, 2) != 0)
        {
            task.Fail(SenseCode.InvalidFieldInCdb);
            return;
        }
        var d = task.Scratch;
        ulong last = Info.BlockCount - 1;
        BinaryPrimitives.WriteUInt32BigEndian(d, last > uint.MaxValue ? uint.MaxValue : (uint)last);
        BinaryPrimitives.WriteUInt32BigEndian(d[4..], Info.BlockSize);
        task.ReturnData(d[..8], 8);
    }

    private void ReadCapacity16(ref ScsiTask task)
    {
        var d = task.Scratch;
        d[..32].Clear();
        BinaryPrimitives.WriteUInt64BigEndian(d, Info.BlockCount - 1);
        BinaryPrimitives.WriteUInt32BigEndian(d[8..], Info.BlockSize);
        if (Provisioning) d[14] = (byte)(0x80 | (UnmapReadsZeros ? 0x40 : 0));    // LBPME, LBPRZ
        task.ReturnData(d[..32], Cdb.U32(task.Cdb, 10));
    }

    private void SynchronizeCache(ref ScsiTask task, bool sixteen)
    {
        var cdb = task.Cdb;
        ulong lba = sixteen ? Cdb.U64(cdb, 2) : Cdb.U32(cdb, 2);
        ulong blocks = sixteen ? Cdb.U32(cdb, 10) : Cdb.U16(cdb, 7);
        if (!InRange(lba, blocks))
        {
            task.Fail(SenseCode.LbaOutOfRange);
            return;
        }
        task.Good();
        task.Operation = BlockOperation.Flush;
        task.Submit(new BlockRequest { Operation = BlockOperation.Flush, Tag = task.Tag });
    }

    /// <summary>UNMAP: every descriptor is checked before any is submitted; each range becomes a write-zeroes
    /// with UNMAP (the backend may deallocate, and the range reads as zeros afterwards: LBPRZ), or a discard where
    /// <see cref="UnmapReadsZeros"/> is off.</summary>
    private void Unmap(ref ScsiTask task)
    {
        var cdb = task.Cdb;
        if (!Provisioning)
        {
            task.Fail(ReadOnly ? SenseCode.WriteProtected : SenseCode.InvalidOpcode);
            return;
        }
        if ((cdb[1] & 0x01) != 0)
        {
            task.Fail(SenseCode.InvalidFieldInCdb);           // ANCHOR: not supported
            return;
        }
        uint length = Cdb.U16(cdb, 7);
        if (length == 0)
        {
            task.Good();
            return;
        }
        if (length < 8)
        {
            task.Fail(SenseCode.ParameterListLengthError);
            return;
        }
        if (!task.TryReadParameters(length, out var p)) return;
        int descriptorBytes = Cdb.U16(p, 2);
        if (descriptorBytes % 16 != 0 || 8 + descriptorBytes > p.Length)
        {
            task.Fail(SenseCode.ParameterListLengthError);
            return;
        }
        int count = descriptorBytes / 16;
        if (count > Limits.MaxUnmapDescriptors)
        {
            task.Fail(SenseCode.InvalidFieldInParameterList);
            return;
        }
        for (int i = 0; i < count; i++)
        {
            ulong lba = Cdb.U64(p, 8 + i * 16);
            uint blocks = Cdb.U32(p, 16 + i * 16);
            if (!InRange(lba, blocks))
            {
                task.Fail(SenseCode.LbaOutOfRange);
                return;
            }
            if (blocks > Limits.MaxUnmapBlocks)
            {
                task.Fail(SenseCode.InvalidFieldInParameterList);
                return;
            }
        }
        Span<BlockRange> ranges = stackalloc BlockRange[count];
        for (int i = 0; i < count; i++) ranges[i] = new BlockRange(Cdb.U64(p, 8 + i * 16), Cdb.U32(p, 16 + i * 16));
        if (!task.TryBeginWrite(Shared.Gate, ranges)) return;
        task.Good();
        task.Operation = UnmapReadsZeros ? BlockOperation.WriteZeroes : BlockOperation.Discard;
        for (int i = 0; i < count; i++)
        {
            uint blocks = Cdb.U32(p, 16 + i * 16);
            if (blocks == 0) continue;
            task.Submit(new BlockRequest
            {
                Operation = task.Operation,
                // LBPRZ makes UNMAP a zeroing write: durable when it completes while the write cache is off.
                Flags = UnmapReadsZeros ? BlockRequestFlags.Unmap | (_writeCache ? 0 : BlockRequestFlags.Fua) : BlockRequestFlags.None,
                Offset = Cdb.U64(p, 8 + i * 16) * Info.BlockSize,
                Length = (ulong)blocks * Info.BlockSize,
                Tag = task.Tag,
            });
        }
    }

    /// <summary>
    /// WRITE SAME(10/16) (SBC-3 5.42, 5.43): the single Data-Out block is written to every LBA of the range. A zero
    /// block (or NDOB) is a write-zeroes of the range, deallocating with the UNMAP bit (LBPWS); a non-zero block is
    /// written, also with UNMAP set (the device writes rather than unmaps: 4.7.3.3, unmapping could not leave the
    /// pattern). Where the medium cannot write zeroes, zeros are written as a pattern. At most
    /// <see cref="ScsiLimits.MaxWriteSameBlocks"/> (VPD B0h MAXIMUM WRITE SAME LENGTH), else INVALID FIELD IN CDB.
    /// </summary>
    private void WriteSame(ref ScsiTask task, bool sixteen)
    {
        var cdb = task.Cdb;
        byte flags = cdb[1];
        bool unmap = (flags & 0x08) != 0;
        bool noDataBuffer = sixteen && (flags & 0x01) != 0;
        // WRPROTECT, ANCHOR, PBDATA, LBDATA: not supported.
        if ((flags & 0xf6) != 0)
        {
            task.Fail(SenseCode.InvalidFieldInCdb);
            return;
        }
        ulong lba = sixteen ? Cdb.U64(cdb, 2) : Cdb.U32(cdb, 2);
        uint blocks = sixteen ? Cdb.U32(cdb, 10) : Cdb.U16(cdb, 7);
        if (!AdmitWrite(ref task, lba, blocks, lengthValid: blocks != 0 && blocks <= Limits.MaxWriteSameBlocks)) return;
        ReadOnlySpan<byte> pattern;
        if (noDataBuffer)
        {
            task.Scratch[..(int)Info.BlockSize].Clear();
            pattern = task.Scratch[..(int)Info.BlockSize];
        }
        else if (!task.TryReadParameters(Info.BlockSize, out pattern))
        {
            return;
        }
        if (!task.TryBeginWrite(Shared.Gate, new BlockRange(lba, blocks))) return;
        ulong offset = lba * Info.BlockSize;
        ulong length = (ulong)blocks * Info.BlockSize;
        if (pattern.IndexOfAnyExcept((byte)0) >= 0 || !Info.SupportsWriteZeroes)
        {
            task.Good();
            task.SubmitRepeated(pattern, offset, length, _writeCache ? BlockRequestFlags.None : BlockRequestFlags.Fua);
            return;
        }
        task.Good();
        task.Operation = BlockOperation.WriteZeroes;
        task.Submit(new BlockRequest
        {
            Operation = BlockOperation.WriteZeroes,
            Flags = (unmap && Provisioning ? BlockRequestFlags.Unmap : BlockRequestFlags.None) | (_writeCache ? 0 : BlockRequestFlags.Fua),
            Offset = offset,
            Length = length,
            Tag = task.Tag,
        });
    }

    /// <summary>
    /// COMPARE AND WRITE (SBC-3 5.2; CDB: WRPROTECT byte 1 bits 7-5, FUA bit 3, LBA bytes 2-9, NUMBER OF LOGICAL BLOCKS
    /// byte 13). The Data-Out buffer holds NUMBER OF LOGICAL BLOCKS of verify data, then as many of write data.
    /// WRPROTECT other than 0 (no protection information) or more blocks than <see cref="ScsiLimits.MaxCompareAndWriteBlocks"/>:
    /// INVALID FIELD IN CDB; beyond the capacity: LOGICAL BLOCK ADDRESS OUT OF RANGE; read-only: WRITE PROTECTED; zero
    /// blocks: GOOD, nothing read or written; a Data-Out buffer of any length other than twice the range: INVALID
    /// FIELD IN COMMAND INFORMATION UNIT (the split between verify and write data would be a guess). Otherwise the
    /// queue's <see cref="CompareAndWriteRunner"/> reads, compares and writes atomically against every other write to
    /// the range (<see cref="CompareAndWriteGate"/>); a mismatch ends in MISCOMPARE, MISCOMPARE DURING VERIFY OPERATION
    /// with the offset of the first differing byte in INFORMATION. The write is FUA with FUA set or the write cache off.
    /// </summary>
    private void CompareAndWrite(ref ScsiTask task)
    {
        var cdb = task.Cdb;
        if (cdb[1] >> 5 != 0)
        {
            task.Fail(SenseCode.InvalidFieldInCdb);
            return;
        }
        ulong lba = Cdb.U64(cdb, 2);
        uint blocks = cdb[13];
        if (!AdmitWrite(ref task, lba, blocks, lengthValid: blocks <= Limits.MaxCompareAndWriteBlocks)) return;
        task.Good();
        if (blocks == 0) return;
        ulong bytes = 2UL * blocks * Info.BlockSize;
        if (task.DataOutBytes != bytes)
        {
            task.Fail(SenseCode.InvalidFieldInCommandInformationUnit);
            return;
        }
        task.DataOutConsumed = bytes;
        bool fua = (cdb[1] & 0x08) != 0 || !_writeCache;
        task.SubmitCompareAndWrite(Shared.Gate, new BlockRange(lba, blocks), Info.BlockSize, fua ? BlockRequestFlags.Fua : BlockRequestFlags.None);
    }
}
