using System.Runtime.InteropServices;

namespace BlkTarget.Storage.Transfer;

/// <summary>
/// Aligned buffers for the rare request whose guest buffers O_DIRECT cannot use (Linux guests align to 512
/// bytes, so this is for unusual drivers). Buffers up to <see cref="CachedSize"/> are kept for reuse; larger
/// ones are allocated for the request and freed after it.
/// </summary>
internal sealed unsafe class BouncePool(uint alignment) : IDisposable
{
    public const nuint CachedSize = 1 << 20;
    private const int MaxCached = 8;
    private readonly Stack<nint> _cached = new();

    public byte* Rent(nuint length)
    {
        if (length <= CachedSize && _cached.TryPop(out nint cached)) return (byte*)cached;
        nuint size = length <= CachedSize ? CachedSize : (length + alignment - 1) / alignment * alignment;
        return (byte*)NativeMemory.AlignedAlloc(size, alignment);
    }

    public void Return(byte* buffer, nuint length)
    {
        if (length <= CachedSize && _cached.Count < MaxCached) _cached.Push((nint)buffer);
        else NativeMemory.AlignedFree(buffer);
    }

    public void Dispose()
    {
        while (_cached.TryPop(out nint p)) NativeMemory.AlignedFree((void*)p);
    }
}
