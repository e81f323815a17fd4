using BlkTarget.Storage;
using BlkTarget.Storage.Image;
using BlkTarget.Storage.Nbd;
using BlkTarget.Storage.RawFile;
using BlkTarget.Storage.Ram;
using BlkTarget.Storage.Rbd;
using BlkTarget.Vhost.Scsi;
using BlkTarget.Vhost.Scsi.Reservations;
using Microsoft.Extensions.Logging;

namespace BlkTarget.Management;

/// <summary>Opens the backend a <see cref="DiskSpec"/> describes. A file it created for a failed open is removed again.</summary>
public static class DiskOpener
{
    /// <summary>Opens (and with <see cref="DiskSpec.CreateSize"/>, first creates) the backend; throws
    /// <see cref="ManagementException"/> <see cref="RpcErrorCode.ResourceError"/> with one line on failure.</summary>
    public static IBlockDevice Open(DiskSpec spec, ILogger log)
    {
        var backend = spec.Backend;
        bool created = false;
        try
        {
            switch (backend.Kind)
            {
                case "ram":
                    return new RamDisk(backend.SizeBytes, spec.BlockSize, spec.ReadOnly, backend.Pages);
                case "file":
                    created = spec.CreateSize is not null && !File.Exists(backend.Path);
                    return FileDisk.Open(new FileDiskOptions
                    {
                        Path = backend.Path!,
                        DirectIo = backend.DirectIo,
                        ReadOnly = spec.ReadOnly,
                        BlockSize = spec.BlockSize,
                        CreateSize = spec.CreateSize,
                    }, log);
                case "image":
                    if (spec.CreateSize is ulong size)
                    {
                        if (spec.ReadOnly) throw new IOException("--create makes no sense for a read-only disk");
                        if (File.Exists(backend.Path)) throw new IOException($"{backend.Path} exists; --create creates a new image");
                        ImageFile.Create(backend.Path!, size);
                        created = true;
                    }
                    return ImageDisk.Open(backend.Path!, spec.ReadOnly, spec.BlockSize, backend.DirectIo, log);
                case "rbd":
                    if (spec.CreateSize is not null) throw new IOException("create is not supported for rbd: create the image with `rbd create`");
                    return RbdDisk.Open(backend.ToRbdOptions(spec.ReadOnly, spec.BlockSize), log);
                case "nbd":
                    if (spec.CreateSize is not null) throw new IOException("create is not supported for nbd: the server provides the export");
                    return NbdDisk.Open(backend.ToNbdOptions(spec.ReadOnly, spec.BlockSize), log);
                default:
                    throw new ManagementException(RpcErrorCode.InvalidParams, $"disk {spec.Name}: backend kind {backend.Kind} is not supported");
            }
        }
        catch (Exception e) when (e is IOException or ArgumentException or UnauthorizedAccessException)
        {
            if (created) RemoveCreated(spec);
            throw new ManagementException(RpcErrorCode.ResourceError, $"disk {spec.Name}: {e.Message}");
        }
    }

    /// <summary>
    /// The SCSI logical unit state of the disk: file and image disks keep APTPL reservations in the sidecar
    /// <c>PATH.pr</c> (<see cref="ReservationSidecar"/>) and get back what it holds; RAM disks have none (their data
    /// does not survive a restart either), so APTPL 1 is refused on them. Throws <see cref="ManagementException"/>
    /// <see cref="RpcErrorCode.ResourceError"/> when the sidecar cannot be read or is damaged.
    /// </summary>
    public static SharedLogicalUnit OpenLogicalUnit(DiskSpec spec)
    {
        var sidecar = spec.Backend.Kind is "file" or "image" && spec.Backend.Path is { } path ? ReservationSidecar.For(path) : null;
        try
        {
            return new SharedLogicalUnit(spec.Name, sidecar);
        }
        catch (Exception e) when (e is IOException or InvalidDataException or UnauthorizedAccessException)
        {
            throw new ManagementException(RpcErrorCode.ResourceError, $"disk {spec.Name}: persistent reservations: {e.Message}");
        }
    }

    /// <summary>Removes the file a create made (rollback of a change that failed later).</summary>
    public static void RemoveCreated(DiskSpec spec)
    {
        if (spec.CreateSize is null || spec.Backend.Path is null) return;
        try { File.Delete(spec.Backend.Path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
    }
}
