namespace BlkTarget.Storage.Transfer;

/// <summary>
/// Test seam for power-loss simulation: sees every change this process makes to a backing file, in the order
/// the process observed it (writes and punches after they completed, a sync's start before it is issued and its
/// end after it completed). A simulator replays any prefix with any subset of the changes no completed sync
/// covers and checks that the image still opens and holds every acknowledged-and-flushed write. Null in
/// production: the data path pays one null check.
/// </summary>
internal unsafe interface IMediumRecorder
{
    /// <summary><paramref name="length"/> bytes from <paramref name="iov"/> reached file offset <paramref name="fileOffset"/>;
    /// <paramref name="durable"/> when the write itself was synchronous (RWF_DSYNC).</summary>
    void Wrote(ulong fileOffset, IoVec* iov, int iovCount, ulong length, bool durable);

    void Punched(ulong fileOffset, ulong length);

    void Resized(ulong size);

    /// <summary>An fsync/fdatasync is about to be issued; returns a token for <see cref="SyncCompleted"/>.</summary>
    long SyncStarted();

    void SyncCompleted(long token);
}
