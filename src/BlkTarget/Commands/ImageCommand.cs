using System.CommandLine;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using BlkTarget.Configuration;
using BlkTarget.Storage.Image;
using static BlkTarget.Commands.ProgressDisplay;

namespace BlkTarget.Commands;

/// <summary>
/// `blktarget image create|info|check|resize|convert|export|import`: the sparse image tooling. The work lives in
/// BlkTarget.Storage.Image; this is argument handling and output. Problems the user can fix (bad arguments,
/// missing, foreign, truncated or corrupt files) print one line `blktarget: ...` on stderr and exit 1.
/// </summary>
public static class ImageCommand
{
    /// <summary>check: corruption found (and not repaired).</summary>
    public const int ExitCorrupt = 2;
    /// <summary>check: only leaks found (wasted space, clusters past the end of the file; data intact).</summary>
    public const int ExitLeaks = 3;
    /// <summary>convert/export/import interrupted by SIGINT/SIGTERM (the partial output is removed).</summary>
    public const int ExitInterrupted = 130;
    private const int MaxListedProblems = 50;

    public static Command Create()
    {
        var command = new Command("image", "Create, inspect, check, grow, convert, export and import BlkTarget sparse images")
        {
            CreateCommand(), InfoCommand(), CheckCommand(), ResizeCommand(), ConvertCommand(), ExportCommand(), ImportCommand(),
        };
        return command;
    }

    private static Argument<string> PathArgument(string name, string description) => new(name) { Description = description };

    private static Option<string?> ClusterSizeOption(string description) => new("--cluster-size") { Description = description };

    private static Command CreateCommand()
    {
        var path = PathArgument("PATH", "The image file to create (must not exist)");
        var size = new Option<string?>("--size") { Description = "Virtual size, e.g. 10G (a multiple of 512 bytes)" };
        var cluster = ClusterSizeOption("Cluster size, a power of two from 4K to 2M (default 64K)");
        var command = new Command("create", "Create an empty thin-provisioned image") { path, size, cluster };
        command.SetAction(parse => Guard(() =>
        {
            string target = parse.GetValue(path)!;
            ulong bytes = ParseSize("--size", parse.GetValue(size) ?? throw new UsageException("--size is required, e.g. --size 10G"));
            uint clusterSize = ParseClusterSize(parse.GetValue(cluster)) ?? ImageHeader.DefaultClusterSize;
            if (File.Exists(target) || Directory.Exists(target)) throw new UsageException($"{target} already exists");
            ImageFile.Create(target, bytes, clusterSize);
            Console.WriteLine($"created {target}: {Human(bytes)} virtual ({bytes} bytes), {Human(clusterSize)} clusters");
            return 0;
        }));
        return command;
    }

    private static Command InfoCommand()
    {
        var path = PathArgument("PATH", "The image");
        var json = new Option<bool>("--json") { Description = "Print JSON instead of text" };
        var command = new Command("info", "Show an image's virtual size, cluster size and allocation") { path, json };
        command.SetAction(parse => Guard(() =>
        {
            var info = ImageInfo.Read(parse.GetValue(path)!);
            if (parse.GetValue(json)) WriteInfoJson(info);
            else WriteInfoText(info);
            return 0;
        }));
        return command;
    }

    private static void WriteInfoText(ImageInfo info)
    {
        var h = info.Header;
        double percent = h.MapEntries == 0 ? 0 : 100.0 * info.AllocatedClusters / h.MapEntries;
        Console.WriteLine($"image:          {info.Path}");
        Console.WriteLine($"format:         BlkTarget sparse image, version {h.Version}");
        Console.WriteLine($"virtual size:   {Human(h.VirtualSize)} ({h.VirtualSize} bytes)");
        Console.WriteLine($"cluster size:   {Human(h.ClusterSize)} ({h.ClusterSize} bytes)");
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"allocated:      {info.AllocatedClusters} of {h.MapEntries} clusters, {Human(info.AllocatedBytes)} ({info.AllocatedBytes} bytes, {percent:0.0}%)"));
        Console.WriteLine($"map:            {h.MapEntries} entries, {Human(h.MapBytes)} at offset {h.MapOffset}; data from offset {h.DataOffset}");
        Console.WriteLine($"file size:      {Human(info.FileSize)} ({info.FileSize} bytes), {Human(info.DiskUsage)} on disk");
    }

    private static void WriteInfoJson(ImageInfo info)
    {
        var h = info.Header;
        using var stdout = Console.OpenStandardOutput();
        using (var w = new Utf8JsonWriter(stdout, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteString("path", info.Path);
            w.WriteString("format", "blktarget-image");
            w.WriteNumber("version", h.Version);
            w.WriteNumber("virtualSize", h.VirtualSize);
            w.WriteNumber("clusterSize", h.ClusterSize);
            w.WriteNumber("clusters", h.MapEntries);
            w.WriteNumber("allocatedClusters", info.AllocatedClusters);
            w.WriteNumber("allocatedBytes", info.AllocatedBytes);
            w.WriteNumber("mapOffset", h.MapOffset);
            w.WriteNumber("mapBytes", h.MapBytes);
            w.WriteNumber("dataOffset", h.DataOffset);
            w.WriteNumber("fileSize", info.FileSize);
            w.WriteNumber("diskUsage", info.DiskUsage);
            w.WriteEndObject();
        }
        stdout.Write("\n"u8);
    }

    private static Command ResizeCommand()
    {
        var path = PathArgument("PATH", "The image (not in use: a served image grows with 'blktarget disk resize')");
        var size = new Argument<string>("SIZE") { Description = "The new virtual size, e.g. 20G (larger than now, a multiple of 512 bytes)" };
        var command = new Command("resize", "Grow an image's virtual size (crash-safe; images never shrink)") { path, size };
        command.SetAction(parse => Guard(() =>
        {
            string target = parse.GetValue(path)!;
            ulong bytes = ParseSize("SIZE", parse.GetValue(size)!);
            using var image = ImageFile.Open(target, readOnly: false, directIo: false);
            int moved = ImageGrowth.Run(image, bytes);
            Console.WriteLine($"resized {target}: {Human(bytes)} virtual ({bytes} bytes){(moved > 0 ? $", {moved} clusters moved to make room for the map" : "")}");
            return 0;
        }));
        return command;
    }

    private static Command CheckCommand()
    {
        var path = PathArgument("PATH", "The image");
        var repair = new Option<bool>("--repair") { Description = "Fix what check finds (clears bad map entries, punches leaked clusters)" };
        var command = new Command("check",
            "Check the allocation map and free space. Exit 0: clean, 2: corrupt, 3: only leaked space; without --repair the image is not written")
            { path, repair };
        command.SetAction(parse => Guard(() =>
        {
            string image = parse.GetValue(path)!;
            bool fix = parse.GetValue(repair);
            ImageCheckResult result;
            using (var progress = ForTerminal(fix ? "repair" : "check"))
                result = ImageChecker.Check(image, fix, progress.Report);
            return ReportCheck(image, result, fix);
        }));
        return command;
    }

    private static int ReportCheck(string image, ImageCheckResult result, bool repaired)
    {
        var h = result.Header;
        string usage = $"{result.AllocatedClusters} of {h.MapEntries} clusters allocated, file {Human(result.FileSize)}";
        if (result.Problems.Count == 0)
        {
            Console.WriteLine($"{image}: no problems found ({usage})");
            return 0;
        }
        int corrupt = result.Problems.Count(p => p.IsCorruption), leaks = result.Problems.Count - corrupt;
        Console.WriteLine($"{image}: {Count(result.Problems.Count, "problem")} ({Count(corrupt, "corruption")}, {Count(leaks, "leak")}; {usage})");
        foreach (var problem in result.Problems.Take(MaxListedProblems))
            Console.WriteLine($"  {(problem.IsCorruption ? "error" : "leak ")}  {problem.Message}");
        if (result.Problems.Count > MaxListedProblems) Console.WriteLine($"  ... and {result.Problems.Count - MaxListedProblems} more");
        if (repaired)
        {
            foreach (var line in result.Repairs) Console.WriteLine($"  repaired  {line}");
            if (result.Clean)
            {
                Console.WriteLine($"{image}: repaired, no problems remain");
                return 0;
            }
            Console.WriteLine($"{image}: {Count(result.Remaining.Count, "problem")} remain after the repair");
        }
        else
        {
            Console.WriteLine($"run 'blktarget image check --repair {image}' to fix {(corrupt > 0 ? "them" : "the leaks")}");
        }
        return result.HasCorruption ? ExitCorrupt : ExitLeaks;
    }

    private static Command ConvertCommand()
    {
        var source = PathArgument("SRC", "Source: a BlkTarget image or a raw file / block device (detected by magic)");
        var destination = PathArgument("DST", "Destination file to create (must not exist)");
        var format = new Option<string>("--format") { Description = "Destination format: image (default) or raw", DefaultValueFactory = _ => "image" };
        var cluster = ClusterSizeOption("Image output: cluster size (default: the source image's, else 64K)");
        var command = new Command("convert", "Copy a disk between raw and image formats; zero runs are not written (sparse output)")
            { source, destination, format, cluster };
        command.SetAction(parse => Guard(() =>
        {
            string src = parse.GetValue(source)!, dst = parse.GetValue(destination)!, to = parse.GetValue(format)!.ToLowerInvariant();
            if (to is not ("raw" or "image")) throw new UsageException($"--format: '{to}' is not raw or image");
            uint? clusterSize = ParseClusterSize(parse.GetValue(cluster));
            if (clusterSize is not null && to == "raw") throw new UsageException("--cluster-size applies to image output only");
            if (File.Exists(dst) || Directory.Exists(dst)) throw new UsageException($"{dst} already exists");
            return Interruptible(dst, cancel =>
            {
                (CopyResult r, string from, ulong clusters) result;
                using (var progress = ForTerminal("convert"))
                    result = DiskCopy.Convert(src, dst, to, clusterSize, progress.Report, cancel);
                var (r, from, clusters) = result;
                string allocation = to == "image" ? $", {clusters} clusters allocated" : "";
                Console.WriteLine($"converted {src} ({from}) to {dst} ({to}): {Human(r.Size)} virtual, {Human(r.DataBytes)} of data written{allocation}, {Seconds(r.Elapsed)}");
                return 0;
            });
        }));
        return command;
    }

    private static Command ExportCommand()
    {
        var image = PathArgument("IMAGE", "The image to export");
        var output = PathArgument("OUT", "The stream to write, e.g. disk.zst (must not exist), or - for stdout");
        var level = new Option<int>("--level") { Description = "zstd compression level, 1-19 (default 3)", DefaultValueFactory = _ => 3 };
        var command = new Command("export", "Write an image as a zstd-compressed sparse stream (docs/image-format.md)") { image, output, level };
        command.SetAction(parse => Guard(() =>
        {
            string src = parse.GetValue(image)!, dst = parse.GetValue(output)!;
            int zstdLevel = parse.GetValue(level);
            if (zstdLevel is < 1 or > 19) throw new UsageException($"--level: {zstdLevel} is not between 1 and 19");
            bool toStdout = dst == "-";
            if (toStdout && !Console.IsOutputRedirected) throw new UsageException("refusing to write a compressed stream to a terminal; redirect stdout or name a file");
            if (!toStdout && (File.Exists(dst) || Directory.Exists(dst))) throw new UsageException($"{dst} already exists");
            return Interruptible(toStdout ? null : dst, cancel =>
            {
                ExportStream.Summary s;
                using (var progress = ForTerminal("export"))
                {
                    if (toStdout)
                    {
                        using var stdout = Console.OpenStandardOutput();
                        s = ExportStream.Export(src, stdout, zstdLevel, progress.Report, cancel);
                    }
                    else
                    {
                        s = ExportStream.Export(src, dst, zstdLevel, progress.Report, cancel);
                    }
                }
                var report = toStdout ? Console.Error : Console.Out;
                report.WriteLine($"exported {src} to {dst}: {Human(s.VirtualSize)} virtual, {s.Records} extents, {Human(s.DataBytes)} of data, " +
                    $"{Human((ulong)s.CompressedBytes)} compressed, {Seconds(s.Elapsed)}");
                return 0;
            });
        }));
        return command;
    }

    private static Command ImportCommand()
    {
        var input = PathArgument("IN", "A stream written by 'image export', or - for stdin");
        var image = PathArgument("IMAGE", "The image to create (must not exist)");
        var cluster = ClusterSizeOption("Cluster size of the new image (default: the exported image's)");
        var command = new Command("import", "Create an image from an export stream, verifying its checksum") { input, image, cluster };
        command.SetAction(parse => Guard(() =>
        {
            string src = parse.GetValue(input)!, dst = parse.GetValue(image)!;
            uint? clusterSize = ParseClusterSize(parse.GetValue(cluster));
            if (File.Exists(dst) || Directory.Exists(dst)) throw new UsageException($"{dst} already exists");
            return Interruptible(dst, cancel =>
            {
                ExportStream.Summary s;
                using (var progress = ForTerminal("import"))
                {
                    if (src == "-")
                    {
                        using var stdin = Console.OpenStandardInput();
                        s = ExportStream.Import(stdin, dst, clusterSize, progress.Report, cancel);
                    }
                    else
                    {
                        s = ExportStream.Import(src, dst, clusterSize, progress.Report, cancel);
                    }
                }
                Console.WriteLine($"imported {src} to {dst}: {Human(s.VirtualSize)} virtual, {Human(s.ClusterSize)} clusters, {s.Records} extents, " +
                    $"{s.AllocatedClusters} clusters allocated, checksum ok, {Seconds(s.Elapsed)}");
                return 0;
            });
        }));
        return command;
    }

    /// <summary>Runs a command body, turning every expected failure into one line on stderr and exit 1.</summary>
    private static int Guard(Func<int> body)
    {
        try
        {
            return body();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or UsageException or ArgumentException)
        {
            return Program.Fail(e.Message);
        }
        catch (OutOfMemoryException)
        {
            return Program.Fail("out of memory (is the image's map implausibly large?)");
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            // A bug, not bad input: still one line, but say what broke.
            return Program.Fail($"internal error: {e.GetType().Name}: {e.Message}");
        }
    }

    /// <summary>Runs a copy that SIGINT/SIGTERM cancel cleanly: the half-written output is removed.</summary>
    private static int Interruptible(string? output, Func<CancellationToken, int> body)
    {
        using var cancel = new CancellationTokenSource();
        void OnSignal(PosixSignalContext context)
        {
            context.Cancel = true;
            cancel.Cancel();
        }
        using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
        try
        {
            return body(cancel.Token);
        }
        catch (OperationCanceledException)
        {
            Console.Error.WriteLine($"blktarget: interrupted{(output is null ? "" : $"; {output} was removed")}");
            return ExitInterrupted;
        }
    }

    private static ulong ParseSize(string option, string text)
    {
        if (!SizeParser.TryParse(text, out ulong bytes) || bytes == 0) throw new UsageException($"{option}: '{text}' is not a size such as 10G");
        return bytes;
    }

    private static uint? ParseClusterSize(string? text)
    {
        if (text is null) return null;
        ulong bytes = ParseSize("--cluster-size", text);
        if (bytes < ImageHeader.MinClusterSize || bytes > ImageHeader.MaxClusterSize || (bytes & (bytes - 1)) != 0)
            throw new UsageException($"--cluster-size: must be a power of two from 4K to 2M, not {text}");
        return (uint)bytes;
    }

    private static string Count(int n, string noun) => $"{n} {noun}{(n == 1 ? "" : "s")}";

    private static string Seconds(TimeSpan t) => string.Create(CultureInfo.InvariantCulture, $"{t.TotalSeconds:0.0} s");

    private sealed class UsageException(string message) : Exception(message);
}
