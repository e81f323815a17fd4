namespace BlkTarget.Storage.Network;

/// <summary>
/// Channels by index, so that a completion reaped on any thread finds the channel that issued it (the index is the
/// high half of the call's user data, <see cref="NetworkChannel{TBackend}.Id"/>). Lookups take no lock: the table is a
/// volatile array that <see cref="Add"/> and <see cref="Remove"/> (rare, serialised) replace and never change. A freed
/// index is reused, so a channel is removed only once nothing of it is outstanding.
/// </summary>
internal sealed class ChannelTable<TChannel> where TChannel : class
{
    private readonly object _gate = new();
    private volatile TChannel?[] _channels = [];

    /// <summary>The channel at <paramref name="id"/>, or null (none, or no more). Any thread.</summary>
    public TChannel? this[int id]
    {
        get
        {
            var table = _channels;
            return id < table.Length ? table[id] : null;
        }
    }

    /// <summary>The channels now in the table (null: a free index); a snapshot, not changed later.</summary>
    public IReadOnlyList<TChannel?> Snapshot => _channels;

    /// <summary>Puts <paramref name="channel"/> at the first free index and returns it.</summary>
    public int Add(TChannel channel)
    {
        lock (_gate)
        {
            var table = _channels;
            int id = Array.IndexOf(table, null);
            var next = id < 0 ? new TChannel?[table.Length + 1] : (TChannel?[])table.Clone();
            if (id < 0)
            {
                table.CopyTo(next, 0);
                id = table.Length;
            }
            next[id] = channel;
            _channels = next;
            return id;
        }
    }

    /// <summary>Frees index <paramref name="id"/>; only once no call of its channel is outstanding (it may be reused).</summary>
    public void Remove(int id)
    {
        lock (_gate)
        {
            var next = (TChannel?[])_channels.Clone();
            next[id] = null;
            _channels = next;
        }
    }
}
