using System.Runtime.InteropServices;

namespace BlkTarget.Storage.Compression;

/// <summary>
/// The part of libzstd's streaming API we use (zstd.h, stable since 1.4), from the system library
/// (Debian: libzstd1). Contexts are owned by <see cref="ZstdCompressContext"/> / <see cref="ZstdDecompressContext"/>.
/// </summary>
internal static unsafe partial class ZstdNative
{
    public const string Library = "libzstd.so.1";

    /// <summary>ZSTD_inBuffer: the input window; the library advances <see cref="Pos"/>.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct InBuffer
    {
        public byte* Src;
        public nuint Size;
        public nuint Pos;
    }

    /// <summary>ZSTD_outBuffer: the output window; the library advances <see cref="Pos"/>.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct OutBuffer
    {
        public byte* Dst;
        public nuint Size;
        public nuint Pos;
    }

    /// <summary>ZSTD_EndDirective.</summary>
    public const int EndContinue = 0, EndFlush = 1, EndFrame = 2;

    /// <summary>ZSTD_cParameter values.</summary>
    public const int CompressionLevel = 100, ChecksumFlag = 201, NbWorkers = 400;

    [LibraryImport(Library, EntryPoint = "ZSTD_versionNumber")]
    public static partial uint VersionNumber();

    [LibraryImport(Library, EntryPoint = "ZSTD_isError")]
    public static partial uint IsError(nuint code);

    [LibraryImport(Library, EntryPoint = "ZSTD_getErrorName")]
    public static partial byte* GetErrorName(nuint code);

    [LibraryImport(Library, EntryPoint = "ZSTD_createCCtx")]
    public static partial nint CreateCCtx();

    [LibraryImport(Library, EntryPoint = "ZSTD_freeCCtx")]
    public static partial nuint FreeCCtx(nint cctx);

    [LibraryImport(Library, EntryPoint = "ZSTD_CCtx_setParameter")]
    public static partial nuint CCtxSetParameter(ZstdCompressContext cctx, int parameter, int value);

    [LibraryImport(Library, EntryPoint = "ZSTD_compressStream2")]
    public static partial nuint CompressStream2(ZstdCompressContext cctx, OutBuffer* output, InBuffer* input, int endOp);

    [LibraryImport(Library, EntryPoint = "ZSTD_CStreamOutSize")]
    public static partial nuint CStreamOutSize();

    [LibraryImport(Library, EntryPoint = "ZSTD_createDCtx")]
    public static partial nint CreateDCtx();

    [LibraryImport(Library, EntryPoint = "ZSTD_freeDCtx")]
    public static partial nuint FreeDCtx(nint dctx);

    [LibraryImport(Library, EntryPoint = "ZSTD_decompressStream")]
    public static partial nuint DecompressStream(ZstdDecompressContext dctx, OutBuffer* output, InBuffer* input);

    [LibraryImport(Library, EntryPoint = "ZSTD_DStreamInSize")]
    public static partial nuint DStreamInSize();

    public static string ErrorName(nuint code) => Marshal.PtrToStringUTF8((nint)GetErrorName(code)) ?? $"zstd error {code}";

    /// <summary>Throws <see cref="ZstdException"/> when <paramref name="code"/> is a zstd error code.</summary>
    public static nuint Check(nuint code, string what)
    {
        if (IsError(code) != 0) throw new ZstdException($"{what}: {ErrorName(code)}");
        return code;
    }

    /// <summary>Runs <paramref name="call"/>, turning a missing libzstd into a clear error.</summary>
    public static T Load<T>(Func<T> call)
    {
        try
        {
            return call();
        }
        catch (DllNotFoundException)
        {
            throw new ZstdException($"zstd is not available: {Library} was not found (install the libzstd1 package)");
        }
        catch (EntryPointNotFoundException e)
        {
            throw new ZstdException($"the installed {Library} is too old: {e.Message}");
        }
    }
}

/// <summary>A zstd failure: corrupt or foreign compressed data, or libzstd missing.</summary>
public sealed class ZstdException(string message) : IOException(message);

/// <summary>Owns a ZSTD_CCtx.</summary>
internal sealed class ZstdCompressContext : SafeHandle
{
    private ZstdCompressContext() : base(IntPtr.Zero, true) { }

    public override bool IsInvalid => handle == IntPtr.Zero;

    public static ZstdCompressContext Create()
    {
        var context = new ZstdCompressContext();
        nint p = ZstdNative.Load(ZstdNative.CreateCCtx);
        if (p == 0)
        {
            context.Dispose();
            throw new ZstdException("ZSTD_createCCtx failed (out of memory)");
        }
        context.SetHandle(p);
        return context;
    }

    protected override bool ReleaseHandle()
    {
        ZstdNative.FreeCCtx(handle);
        return true;
    }
}

/// <summary>Owns a ZSTD_DCtx.</summary>
internal sealed class ZstdDecompressContext : SafeHandle
{
    private ZstdDecompressContext() : base(IntPtr.Zero, true) { }

    public override bool IsInvalid => handle == IntPtr.Zero;

    public static ZstdDecompressContext Create()
    {
        var context = new ZstdDecompressContext();
        nint p = ZstdNative.Load(ZstdNative.CreateDCtx);
        if (p == 0)
        {
            context.Dispose();
            throw new ZstdException("ZSTD_createDCtx failed (out of memory)");
        }
        context.SetHandle(p);
        return context;
    }

    protected override bool ReleaseHandle()
    {
        ZstdNative.FreeDCtx(handle);
        return true;
    }
}
