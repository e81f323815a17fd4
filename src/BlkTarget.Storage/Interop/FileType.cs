using System.Runtime.InteropServices;

namespace BlkTarget.Storage.Interop;

/// <summary>stat(2) file type checks .NET does not expose (is this path a socket?).</summary>
public static unsafe partial class FileType
{
    private const uint S_IFMT = 0xF000;
    private const uint S_IFSOCK = 0xC000;
    private const int StatBufferSize = 256;     // struct stat is 144 bytes on x86-64 and aarch64
    private const int ModeOffset = 24;          // st_dev (8), st_ino (8), st_nlink (8), st_mode (4) on x86-64

    [LibraryImport("libc", EntryPoint = "lstat", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int lstat(string path, byte* buffer);

    public static bool IsSocket(string path)
    {
        byte* buffer = stackalloc byte[StatBufferSize];
        if (lstat(path, buffer) != 0) return false;
        uint mode = *(uint*)(buffer + ModeOffset);
        return (mode & S_IFMT) == S_IFSOCK;
    }
}
