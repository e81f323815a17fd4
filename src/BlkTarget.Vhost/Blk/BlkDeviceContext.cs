using System.Text;
using BlkTarget.Storage;
using BlkTarget.Vhost.Scsi.Atomicity;
using BlkTarget.Vhost.Stats;

namespace BlkTarget.Vhost.Blk;

/// <summary>What every queue of one virtio-blk export shares: backend, options, config space, serial.</summary>
public sealed class BlkDeviceContext
{
    /// <param name="gate">The disk's COMPARE AND WRITE gate when other exports (SCSI) may write it too (a shared
    /// disk); null when only this export writes it.</param>
    public BlkDeviceContext(string name, IBlockDevice backend, BlkOptions options, CompareAndWriteGate? gate = null)
    {
        Name = name;
        Gate = gate;
        Backend = backend;
        Options = options;
        Config = new BlkConfigSpace(backend.Info, options);
        var serial = Encoding.ASCII.GetBytes(options.Serial);
        // The whole 20-byte field, NUL-padded: a driver may have filled its buffer with anything beforehand.
        SerialBytes = new byte[VirtioBlk.IdLength];
        serial.AsSpan(0, Math.Min(serial.Length, VirtioBlk.IdLength)).CopyTo(SerialBytes);
        _sectorsPerBlock = backend.Info.BlockSize / VirtioBlk.SectorSize;
        Counters = QueueCounterSet.Create(options.Queues);
    }

    /// <summary>Request statistics per queue index, kept for the export's lifetime (across frontend sessions).</summary>
    public IReadOnlyList<QueueCounters> Counters { get; }

    private readonly ulong _sectorsPerBlock;

    public string Name { get; }
    public IBlockDevice Backend { get; }
    /// <summary>The backend as it is now (its size grows with <see cref="IBlockDevice.Resize"/>).</summary>
    public BlockDeviceInfo Info => Backend.Info;
    public BlkOptions Options { get; }
    /// <summary>COMPARE AND WRITE of a SCSI export of the same (shared) disk is atomic against this export's writes
    /// too (<see cref="BlkQueue"/>); null: no other export writes the disk.</summary>
    public CompareAndWriteGate? Gate { get; }
    public BlkConfigSpace Config { get; }
    /// <summary>GET_ID answer (virtio 1.2 5.2.6): the serial as a NUL-padded 20-byte string (no terminator only when
    /// it is 20 bytes long). The device writes the whole field, or as much of it as the driver's buffer holds.</summary>
    public byte[] SerialBytes { get; }

    /// <summary>
    /// Converts a virtio sector range (always 512-byte units) to bytes, checking it lies inside the device and
    /// is aligned to the logical block size, without overflow. False means IOERR.
    /// </summary>
    public bool TryByteRange(ulong sector, ulong lengthBytes, out ulong offset)
    {
        offset = 0;
        if (lengthBytes % VirtioBlk.SectorSize != 0) return false;
        ulong sectors = lengthBytes >> VirtioBlk.SectorShift;
        if (sector % _sectorsPerBlock != 0 || sectors % _sectorsPerBlock != 0) return false;
        // The size as of this request: a resize publishes the grown size only after the medium grew.
        ulong capacitySectors = Backend.Info.SizeBytes >> VirtioBlk.SectorShift;
        if (sector > capacitySectors || sectors > capacitySectors - sector) return false;
        offset = sector << VirtioBlk.SectorShift;
        return true;
    }
}
