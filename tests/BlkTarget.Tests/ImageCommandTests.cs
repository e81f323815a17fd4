using System.Text.Json;

namespace BlkTarget.Tests;

/// <summary>`blktarget image ...` as a user meets it: exit codes, output, one-line errors, inputs left untouched.</summary>
public sealed class ImageCommandTests : IDisposable
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);
    private const int Cluster = 64 << 10;
    private const long MapOffset = 64 << 10;   // the map follows the header cluster (64 KiB clusters)
    private readonly string _dir = Directory.CreateTempSubdirectory("blkt-img").FullName;

    private string PathFor(string name) => Path.Combine(_dir, name);

    private static (int Code, string Stdout, string Stderr) Run(params string[] args)
    {
        using var process = TargetProcess.Start(["image", .. args]);
        int code = process.WaitForExit(Timeout);
        return (code, process.Stdout, process.Stderr);
    }

    private static void AssertOneLineError(string stderr, string? expected = null)
    {
        var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length == 1, $"expected one line on stderr, got: {stderr}");
        Assert.StartsWith("blktarget: ", lines[0]);
        if (expected is not null) Assert.Contains(expected, lines[0]);
    }

    /// <summary>A 16 MiB raw disk with data in clusters 0-1 and 7, holes elsewhere.</summary>
    private string RawDisk(string name = "disk.raw")
    {
        string path = PathFor(name);
        var data = new byte[3 * Cluster];
        new Random(5).NextBytes(data);
        using var file = new FileStream(path, FileMode.CreateNew);
        file.SetLength(16 << 20);
        file.Write(data, 0, 2 * Cluster);
        file.Position = 7 * Cluster;
        file.Write(data, 2 * Cluster, Cluster);
        return path;
    }

    /// <summary>An image made from <see cref="RawDisk"/>: virtual clusters 0, 1 and 7 allocated.</summary>
    private string Image(string name = "disk.bti")
    {
        string image = PathFor(name);
        var (code, _, stderr) = Run("convert", RawDisk($"{name}.raw"), image);
        Assert.True(code == 0, stderr);
        return image;
    }

    private static ulong ReadEntry(string image, int virtualCluster)
    {
        using var file = new FileStream(image, FileMode.Open, FileAccess.Read);
        var entry = new byte[8];
        file.Position = MapOffset + virtualCluster * 8;
        file.ReadExactly(entry);
        return BitConverter.ToUInt64(entry);
    }

    private static void WriteEntry(string image, int virtualCluster, ulong physical)
    {
        using var file = new FileStream(image, FileMode.Open, FileAccess.ReadWrite);
        file.Position = MapOffset + virtualCluster * 8;
        file.Write(BitConverter.GetBytes(physical));
    }

    [Fact]
    public void Create_then_info_shows_the_layout_in_text_and_json()
    {
        string image = PathFor("new.bti");
        var create = Run("create", image, "--size", "1G", "--cluster-size", "128K");
        Assert.Equal(0, create.Code);
        Assert.Contains("created", create.Stdout);
        Assert.Equal("", create.Stderr);

        var info = Run("info", image);
        Assert.Equal(0, info.Code);
        Assert.Contains("virtual size:   1.0 GiB (1073741824 bytes)", info.Stdout);
        Assert.Contains("cluster size:   128.0 KiB", info.Stdout);
        Assert.Contains("allocated:      0 of 8192 clusters", info.Stdout);

        var json = Run("info", image, "--json");
        Assert.Equal(0, json.Code);
        using var doc = JsonDocument.Parse(json.Stdout);
        Assert.Equal(1UL << 30, doc.RootElement.GetProperty("virtualSize").GetUInt64());
        Assert.Equal(128u << 10, doc.RootElement.GetProperty("clusterSize").GetUInt32());
        Assert.Equal(0UL, doc.RootElement.GetProperty("allocatedClusters").GetUInt64());
        Assert.True(doc.RootElement.GetProperty("fileSize").GetUInt64() > 0);
        Assert.Equal(8192UL, doc.RootElement.GetProperty("clusters").GetUInt64());
    }

    [Theory]
    [InlineData("create", "{dir}/a.bti")]
    [InlineData("create", "{dir}/a.bti", "--size", "lots")]
    [InlineData("create", "{dir}/a.bti", "--size", "1000")]
    [InlineData("create", "{dir}/a.bti", "--size", "1G", "--cluster-size", "3K")]
    [InlineData("create", "{dir}/a.bti", "--size", "1G", "--cluster-size", "4M")]
    [InlineData("create", "{dir}/taken", "--size", "1G")]
    [InlineData("info", "{dir}/missing.bti")]
    [InlineData("info", "{dir}/taken")]
    [InlineData("check", "{dir}/taken")]
    [InlineData("check")]
    [InlineData("convert", "{dir}/taken", "{dir}/out", "--format", "qcow2")]
    [InlineData("convert", "{dir}/taken", "{dir}/out", "--format", "raw", "--cluster-size", "64K")]
    [InlineData("convert", "{dir}/taken", "{dir}/taken")]
    [InlineData("convert", "{dir}/missing", "{dir}/out")]
    [InlineData("export", "{dir}/taken", "{dir}/out.zst")]
    [InlineData("export", "{dir}/taken", "{dir}/out.zst", "--level", "40")]
    [InlineData("import", "{dir}/taken", "{dir}/out.bti")]
    [InlineData("import", "{dir}/missing.zst", "{dir}/out.bti")]
    [InlineData("frobnicate")]
    [InlineData]
    public void Bad_input_exits_1_with_one_line_on_stderr(params string[] args)
    {
        File.WriteAllText(PathFor("taken"), "not an image, not a stream");
        var (code, _, stderr) = Run(args.Select(a => a.Replace("{dir}", _dir)).ToArray());
        Assert.Equal(1, code);
        AssertOneLineError(stderr);
        Assert.Equal("not an image, not a stream", File.ReadAllText(PathFor("taken")));
        Assert.False(File.Exists(PathFor("out")) || File.Exists(PathFor("out.zst")) || File.Exists(PathFor("out.bti")) || File.Exists(PathFor("a.bti")));
    }

    [Theory]
    [InlineData("magic")]
    [InlineData("header")]
    [InlineData("truncated")]
    [InlineData("map")]
    public void A_damaged_image_gives_a_clear_error_everywhere_and_is_never_written(string damage)
    {
        string image = Image();
        switch (damage)
        {
            case "magic": File.WriteAllBytes(image, [0x51, 0x46, 0x49, 0xFB, .. File.ReadAllBytes(image)[4..]]); break;
            case "header":
                var bytes = File.ReadAllBytes(image);
                bytes[17] ^= 0x40;
                File.WriteAllBytes(image, bytes);
                break;
            case "truncated": File.WriteAllBytes(image, File.ReadAllBytes(image)[..6000]); break;
            case "map": WriteEntry(image, 3, ReadEntry(image, 0)); break;
        }
        var before = File.ReadAllBytes(image);
        string expected = damage switch { "magic" => "wrong magic", "header" => "checksum", "truncated" => "truncated", _ => "corrupt allocation map" };
        foreach (var args in new[] { ["info", image], ["export", image, PathFor("x.zst")], new[] { "convert", image, PathFor("x.raw"), "--format", "raw" } })
        {
            var (code, _, stderr) = Run(args);
            if (damage == "magic" && args[0] == "convert")
            {
                Assert.Equal(0, code);   // no magic: a raw disk as far as convert can tell
                File.Delete(PathFor("x.raw"));
                continue;
            }
            Assert.Equal(1, code);
            AssertOneLineError(stderr, expected);
            Assert.Contains(image, stderr);
        }
        Assert.False(File.Exists(PathFor("x.zst")));
        if (damage != "map")
        {
            var (code, _, stderr) = Run("check", image);
            Assert.Equal(1, code);
            AssertOneLineError(stderr, expected);
        }
        Assert.Equal(before, File.ReadAllBytes(image));
    }

    [Fact]
    public void Check_exits_2_on_corruption_lists_it_and_repair_fixes_it()
    {
        string image = Image();
        WriteEntry(image, 9, ReadEntry(image, 7));   // the lowest virtual cluster (7) keeps a shared cluster
        var before = File.ReadAllBytes(image);

        var check = Run("check", image);
        Assert.Equal(2, check.Code);
        Assert.Contains("1 problem (1 corruption, 0 leaks", check.Stdout);
        Assert.Contains("virtual cluster 9 maps to physical cluster", check.Stdout);
        Assert.Contains("check --repair", check.Stdout);
        Assert.Equal(before, File.ReadAllBytes(image));

        var repair = Run("check", image, "--repair");
        Assert.Equal(0, repair.Code);
        Assert.Contains("repaired  cleared 1 map entry", repair.Stdout);
        Assert.Contains("no problems remain", repair.Stdout);
        Assert.Equal(0UL, ReadEntry(image, 9));
        Assert.NotEqual(0UL, ReadEntry(image, 7));

        var again = Run("check", image);
        Assert.Equal(0, again.Code);
        Assert.Contains("no problems found (3 of 256 clusters allocated", again.Stdout);
    }

    [Fact]
    public void Check_exits_3_when_only_space_leaked_and_repair_returns_it()
    {
        string image = Image();
        WriteEntry(image, 1, 0);
        var check = Run("check", image);
        Assert.Equal(3, check.Code);
        Assert.Contains("leak", check.Stdout);
        Assert.Contains("data no map entry references", check.Stdout);
        var repair = Run("check", image, "--repair");
        Assert.Equal(0, repair.Code);
        Assert.Contains("punched 1 leaked cluster", repair.Stdout);
        Assert.Equal(0, Run("check", image).Code);
    }

    [Fact]
    public void Convert_round_trips_raw_to_image_to_raw_sparsely_and_quietly_when_piped()
    {
        string raw = RawDisk(), image = PathFor("c.bti"), back = PathFor("back.raw");
        var toImage = Run("convert", raw, image);
        Assert.Equal(0, toImage.Code);
        Assert.Equal("", toImage.Stderr);                   // no progress line when stderr is not a terminal
        Assert.Contains("(raw) to", toImage.Stdout);
        Assert.Contains("3 clusters allocated", toImage.Stdout);

        var toRaw = Run("convert", image, back, "--format", "raw");
        Assert.Equal(0, toRaw.Code);
        Assert.Equal("", toRaw.Stderr);
        Assert.Equal(File.ReadAllBytes(raw), File.ReadAllBytes(back));

        using var doc = JsonDocument.Parse(Run("info", image, "--json").Stdout);
        Assert.Equal(3UL, doc.RootElement.GetProperty("allocatedClusters").GetUInt64());
    }

    [Fact]
    public void Export_and_import_round_trip_and_a_truncated_stream_is_refused()
    {
        string image = Image(), stream = PathFor("disk.zst"), restored = PathFor("restored.bti"), back = PathFor("restored.raw");
        var export = Run("export", image, stream);
        Assert.Equal(0, export.Code);
        Assert.Equal("", export.Stderr);
        Assert.Contains("2 extents", export.Stdout);

        var import = Run("import", stream, restored);
        Assert.Equal(0, import.Code);
        Assert.Equal("", import.Stderr);
        Assert.Contains("checksum ok", import.Stdout);
        Assert.Equal(0, Run("convert", restored, back, "--format", "raw").Code);
        Assert.Equal(File.ReadAllBytes(PathFor("disk.bti.raw")), File.ReadAllBytes(back));

        var again = Run("import", stream, restored);
        Assert.Equal(1, again.Code);
        AssertOneLineError(again.Stderr, "already exists");

        string cut = PathFor("cut.zst"), never = PathFor("never.bti");
        File.WriteAllBytes(cut, File.ReadAllBytes(stream)[..(int)(new FileInfo(stream).Length * 3 / 4)]);
        var truncated = Run("import", cut, never);
        Assert.Equal(1, truncated.Code);
        AssertOneLineError(truncated.Stderr, "truncated");
        Assert.False(File.Exists(never));
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);
}
