namespace BlkTarget.Storage.Interop;

/// <summary>Atomic, durable replacement of a small file: a crash leaves the old content or the new, never a mix.</summary>
public static class DurableFile
{
    /// <summary>Writes <paramref name="content"/> to a temporary file next to <paramref name="path"/>, fsyncs it,
    /// renames it over <paramref name="path"/> and fsyncs the directory. Blocks on the medium: never call it on a
    /// reactor. Throws <see cref="IOException"/> or <see cref="UnauthorizedAccessException"/>; the temporary file is
    /// removed again on failure.</summary>
    public static void Replace(string path, ReadOnlySpan<byte> content)
    {
        string full = Path.GetFullPath(path);
        string directory = Path.GetDirectoryName(full)!;
        string temporary = Path.Combine(directory, $".{Path.GetFileName(full)}.tmp-{Environment.ProcessId}");
        try
        {
            using (var stream = new FileStream(temporary, FileMode.Create, FileAccess.Write, FileShare.None))
            {
                stream.Write(content);
                stream.Flush(flushToDisk: true);
            }
            File.Move(temporary, full, overwrite: true);
            DirectorySync.Fsync(directory);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            try { File.Delete(temporary); }
            catch (IOException) { }
            throw;
        }
    }
}
