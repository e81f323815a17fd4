using BlkTarget.Configuration;

namespace BlkTarget.Tests;

/// <summary>SCSI devices in the config file and their validation.</summary>
public sealed class ScsiConfigTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("blktarget-scsi-config").FullName;

    private TargetSettings Load(string json)
    {
        string path = Path.Combine(_dir, "target.json");
        File.WriteAllText(path, json.Replace("SOCKDIR", _dir));
        var settings = ConfigFile.Load(path);
        SettingsValidator.Validate(settings, Environment.ProcessorCount);
        return settings;
    }

    [Fact]
    public void A_scsi_device_with_several_targets_and_luns_loads_with_per_lun_settings()
    {
        var settings = Load("""
            { "devices": [ { "name": "vm1", "kind": "scsi", "socket": "SOCKDIR/s.sock", "queues": 2, "blockSize": 4096,
                "targets": [
                  { "target": 0, "luns": [ { "lun": 0, "backend": "ram:1G" },
                                           { "lun": 1, "backend": "image:SOCKDIR/x.bti", "create": "2G", "readOnly": false, "serial": "DATA", "blockSize": 512, "writeCache": false } ] },
                  { "target": 3, "luns": [ { "lun": 7, "backend": "ram:64M", "readOnly": true } ] },
                ] } ] }
            """);
        var d = settings.Devices.Single();
        Assert.Equal("scsi", d.Kind);
        Assert.Equal(2, d.Queues);
        Assert.Equal(3, d.Luns.Count);
        Assert.Equal((0, 0, 4096u), (d.Luns[0].Target, d.Luns[0].Lun, d.Luns[0].BlockSize));
        Assert.Equal("image", d.Luns[1].Backend.Kind);
        Assert.Equal(2UL << 30, d.Luns[1].CreateSize);
        Assert.Equal(("DATA", 512u, false), (d.Luns[1].Serial, d.Luns[1].BlockSize, d.Luns[1].WriteCache));
        Assert.Equal((3, 7, true), (d.Luns[2].Target, d.Luns[2].Lun, d.Luns[2].ReadOnly));
    }

    [Fact]
    public void A_scsi_device_with_one_backend_is_one_lun_at_target_0_lun_0()
    {
        var d = Load("""{ "devices": [ { "kind": "scsi", "socket": "SOCKDIR/s.sock", "backend": "ram:1G", "readOnly": true } ] }""").Devices.Single();
        var lun = Assert.Single(d.Luns);
        Assert.Equal((0, 0, true), (lun.Target, lun.Lun, lun.ReadOnly));
    }

    [Theory]
    [InlineData("""{ "kind": "scsi", "socket": "SOCKDIR/s.sock" }""", "'backend' is required (or 'targets')")]
    [InlineData("""{ "kind": "scsi", "socket": "SOCKDIR/s.sock", "backend": "ram:1G", "targets": [] }""", "either 'backend'")]
    [InlineData("""{ "kind": "scsi", "socket": "SOCKDIR/s.sock", "targets": [] }""", "'targets' is empty")]
    [InlineData("""{ "socket": "SOCKDIR/s.sock", "targets": [ { "target": 0, "luns": [ { "lun": 0, "backend": "ram:1G" } ] } ] }""", "only to kind scsi")]
    [InlineData("""{ "kind": "scsi", "socket": "SOCKDIR/s.sock", "targets": [ { "luns": [ { "lun": 0, "backend": "ram:1G" } ] } ] }""", "'target' is required")]
    [InlineData("""{ "kind": "scsi", "socket": "SOCKDIR/s.sock", "targets": [ { "target": 0 } ] }""", "'luns' is required")]
    [InlineData("""{ "kind": "scsi", "socket": "SOCKDIR/s.sock", "targets": [ { "target": 0, "luns": [ { "backend": "ram:1G" } ] } ] }""", "'lun' is required")]
    [InlineData("""{ "kind": "scsi", "socket": "SOCKDIR/s.sock", "targets": [ { "target": 0, "luns": [ { "lun": 0 } ] } ] }""", "targets[0].luns[0]: 'backend' is required")]
    [InlineData("""{ "kind": "scsi", "socket": "SOCKDIR/s.sock", "targets": [ { "target": 0, "luns": [ { "lun": 0, "backend": "ram:1G", "lunn": 1 } ] } ] }""", "lunn")]
    [InlineData("""{ "kind": "scsi", "socket": "SOCKDIR/s.sock", "targets": [ { "target": 0, "luns": [ { "lun": 0, "backend": "ram:1G" }, { "lun": 0, "backend": "ram:1G" } ] } ] }""", "defined twice")]
    [InlineData("""{ "kind": "scsi", "socket": "SOCKDIR/s.sock", "targets": [ { "target": 256, "luns": [ { "lun": 0, "backend": "ram:1G" } ] } ] }""", "between 0 and 255")]
    [InlineData("""{ "kind": "scsi", "socket": "SOCKDIR/s.sock", "targets": [ { "target": 0, "luns": [ { "lun": 16384, "backend": "ram:1G" } ] } ] }""", "between 0 and 16383")]
    [InlineData("""{ "kind": "scsi", "socket": "SOCKDIR/s.sock", "targets": [ { "target": 0, "luns": [ { "lun": 0, "backend": "ram:1G", "blockSize": 1024 } ] } ] }""", "block size")]
    [InlineData("""{ "kind": "scsi", "socket": "SOCKDIR/s.sock", "targets": [ { "target": 0, "luns": [ { "lun": 0, "backend": "ram:1G", "create": "1G" } ] } ] }""", "'create' only applies")]
    [InlineData("""{ "kind": "scsi", "socket": "SOCKDIR/s.sock", "targets": [ { "target": 0, "luns": [ { "lun": 0, "backend": "file:/x.img" }, { "lun": 1, "backend": "file:/x.img" } ] } ] }""", "backs two LUNs")]
    [InlineData("""{ "kind": "scsi", "socket": "SOCKDIR/s.sock", "queues": 255, "backend": "ram:1G" }""", "request queues")]
    [InlineData("""{ "kind": "nvme", "socket": "SOCKDIR/s.sock", "backend": "ram:1G" }""", "kind 'nvme' is not supported")]
    public void Bad_scsi_configs_give_one_clear_error(string device, string expected)
    {
        var error = Assert.Throws<ConfigurationException>(() => Load($$"""{ "devices": [ {{device}} ] }"""));
        Assert.Contains(expected, error.Message);
        Assert.DoesNotContain('\n', error.Message);
    }

    [Fact]
    public void The_example_config_is_valid()
    {
        string repo = AppContext.BaseDirectory;
        while (!File.Exists(Path.Combine(repo, "BlkTarget.slnx"))) repo = Path.GetDirectoryName(repo)!;
        var settings = ConfigFile.Load(Path.Combine(repo, "config", "scsi.json"));
        Assert.Contains(settings.Devices, d => d.Kind == "scsi" && d.Luns.Count >= 2);
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);
}
