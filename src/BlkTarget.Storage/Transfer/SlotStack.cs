namespace BlkTarget.Storage.Transfer;

/// <summary>The free operation slots of a channel: a fixed stack of indexes, allocated once.</summary>
internal sealed class SlotStack
{
    private readonly int[] _free;
    private int _count;

    public SlotStack(int capacity)
    {
        _free = new int[capacity];
        for (int i = 0; i < capacity; i++) _free[i] = capacity - 1 - i;
        _count = capacity;
    }

    public int Capacity => _free.Length;

    public int InUse => _free.Length - _count;

    public bool TryTake(out int index)
    {
        if (_count == 0)
        {
            index = -1;
            return false;
        }
        index = _free[--_count];
        return true;
    }

    public void Return(int index) => _free[_count++] = index;
}
