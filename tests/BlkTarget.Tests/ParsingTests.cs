using BlkTarget.Configuration;

namespace BlkTarget.Tests;

public class ParsingTests
{
    [Theory]
    [InlineData("512", 512UL)]
    [InlineData("4K", 4096UL)]
    [InlineData("4KiB", 4096UL)]
    [InlineData("64M", 64UL << 20)]
    [InlineData("1G", 1UL << 30)]
    [InlineData("3GiB", 3UL << 30)]
    [InlineData("2T", 2UL << 40)]
    [InlineData("1g", 1UL << 30)]
    public void Sizes_parse_with_binary_units(string text, ulong expected)
    {
        Assert.True(SizeParser.TryParse(text, out ulong bytes));
        Assert.Equal(expected, bytes);
    }

    [Theory]
    [InlineData("")]
    [InlineData("G")]
    [InlineData("-1G")]
    [InlineData("1.5G")]
    [InlineData("1X")]
    [InlineData("99999999999T")]
    public void Bad_sizes_are_refused(string text) => Assert.False(SizeParser.TryParse(text, out _));

    [Fact]
    public void Cpu_lists_accept_numbers_and_ranges()
    {
        Assert.True(CpuListParser.TryParse("0-2,5", out var cpus, out _));
        Assert.Equal([0, 1, 2, 5], cpus);
        Assert.False(CpuListParser.TryParse("3-1", out _, out var error));
        Assert.NotNull(error);
        Assert.False(CpuListParser.TryParse("a", out _, out _));
        Assert.False(CpuListParser.TryParse("0-5000", out _, out _));
    }

    [Fact]
    public void Backend_specs_parse_ram_and_refuse_unknown_kinds()
    {
        Assert.True(BackendSpec.TryParse("ram:1G", out var spec, out _));
        Assert.Equal(new BackendSpec("ram", 1UL << 30), spec);
        Assert.False(BackendSpec.TryParse("ram:", out _, out _));
        Assert.False(BackendSpec.TryParse("tape:/dev/st0", out _, out var error));
        Assert.Contains("unknown kind", error);
    }

    [Fact]
    public void Ram_backends_take_transparent_huge_pages_by_default_and_hugepages_on_or_off()
    {
        Assert.True(BackendSpec.TryParse("ram:1G", out var spec, out _));
        Assert.Equal(Storage.Ram.RamDiskPages.Transparent, spec!.Pages);
        Assert.True(BackendSpec.TryParse("ram:1G,hugepages=on", out spec, out _));
        Assert.Equal(Storage.Ram.RamDiskPages.Hugetlb, spec!.Pages);
        Assert.Equal("ram:1 GiB,hugepages=on", spec.ToString());
        Assert.Equal("ram:1G,hugepages=on", spec.ToSpec());   // what a saved config file holds
        Assert.True(BackendSpec.TryParse("ram:512M,hugepages=off", out spec, out _));
        Assert.Equal(Storage.Ram.RamDiskPages.Small, spec!.Pages);
        Assert.False(BackendSpec.TryParse("ram:1G,hugepages=maybe", out _, out var error));
        Assert.Contains("unknown option 'hugepages=maybe'", error);
    }
}

public sealed class ConfigFileTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("blktarget-config").FullName;

    private string Write(string json)
    {
        string path = Path.Combine(_dir, "target.json");
        File.WriteAllText(path, json);
        return path;
    }

    [Fact]
    public void Commented_config_with_several_devices_loads()
    {
        var settings = ConfigFile.Load(Write("""
            {
              // two disks for one VM
              "cpus": "0-1",
              "idlePollMicroseconds": 50,
              "drainTimeoutSeconds": 5,
              "devices": [
                { "name": "os", "socket": "/tmp/os.sock", "backend": "ram:1G", "queues": 2, "serial": "OS-1" },
                { "name": "data", "socket": "/tmp/data.sock", "backend": "ram:512M", "blockSize": 4096, "readOnly": true, },
              ]
            }
            """));
        Assert.Equal(2, settings.Devices.Count);
        Assert.Equal([0, 1], settings.Cpus);
        Assert.Equal(TimeSpan.FromMicroseconds(50), settings.IdlePoll);
        Assert.Equal(TimeSpan.FromSeconds(5), settings.DrainTimeout);
        Assert.Equal("OS-1", settings.Devices[0].Serial);
        Assert.Equal(2, settings.Devices[0].Queues);
        Assert.Equal(4096u, settings.Devices[1].BlockSize);
        Assert.True(settings.Devices[1].ReadOnly);
        Assert.Equal("data", settings.Devices[1].Serial);
    }

    [Theory]
    [InlineData("""null""", "empty")]
    [InlineData("""{ "disks": [ { "backend": "ram:1G" } ] }""", "disks[0]: 'name' is required")]
    [InlineData("""{ "disks": [ { "name": "d", "backend": "ram:1G", "sharde": true } ] }""", "sharde")]
    [InlineData("""{ "exports": [ { "name": "e", "socket": "/tmp/e.sock" } ] }""", "exports[0]: 'disk' is required")]
    [InlineData("""{ "exports": [ { "name": "e", "socket": "/tmp/e.sock", "disk": "d", "luns": [] } ] }""", "'luns' applies only to kind scsi")]
    [InlineData("""{ "devices": [ { "backend": "ram:1G" } ] }""", "'socket' is required")]
    [InlineData("""{ "devices": [ { "socket": "/tmp/a.sock", "backend": "ram:1G", "queus": 2 } ] }""", "queus")]
    [InlineData("""{ "devices": [ { "socket": "/tmp/a.sock", "backend": "disk:1G" } ] }""", "unknown kind")]
    [InlineData("""{ "devices": [ """, "config file")]
    public void Bad_configs_give_one_clear_error(string json, string expected)
    {
        var error = Assert.Throws<ConfigurationException>(() => ConfigFile.Load(Write(json)));
        Assert.Contains(expected, error.Message);
    }

    [Fact]
    public void Validation_catches_duplicates_and_bad_values()
    {
        var device = new DeviceSettings { Name = "a", Socket = Path.Combine(_dir, "a.sock"), Backend = new BackendSpec("ram", 1 << 20) };
        SettingsValidator.Validate(new TargetSettings { Devices = [device] }, 2);
        Assert.Throws<ConfigurationException>(() => SettingsValidator.Validate(new TargetSettings { Devices = [device, device with { Name = "b" }] }, 2));
        Assert.Throws<ConfigurationException>(() => SettingsValidator.Validate(new TargetSettings { Devices = [device with { BlockSize = 1024 }] }, 2));
        Assert.Throws<ConfigurationException>(() => SettingsValidator.Validate(new TargetSettings { Devices = [device with { Queues = 0 }] }, 2));
        Assert.Throws<ConfigurationException>(() => SettingsValidator.Validate(new TargetSettings { Devices = [device with { Serial = new string('x', 21) }] }, 2));
        Assert.Throws<ConfigurationException>(() => SettingsValidator.Validate(new TargetSettings { Devices = [device with { Socket = "/nonexistent-dir/x.sock" }] }, 2));
        Assert.Throws<ConfigurationException>(() => SettingsValidator.Validate(new TargetSettings { Devices = [device], Cpus = [7] }, 2));
        Assert.Throws<ConfigurationException>(() => SettingsValidator.Validate(new TargetSettings { Devices = [device with { Backend = new BackendSpec("ram", 1000) }] }, 2));
        Assert.Throws<ConfigurationException>(() => SettingsValidator.Validate(new TargetSettings { Devices = [device], DrainTimeout = TimeSpan.Zero }, 2));
        Assert.Throws<ConfigurationException>(() => SettingsValidator.Validate(new TargetSettings { Devices = [device], DrainTimeout = TimeSpan.FromDays(2) }, 2));
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void Rbd_backends_parse_with_their_options_and_print_back()
    {
        Assert.True(BackendSpec.TryParse("rbd:rbd/vm1", out var spec, out _));
        Assert.Equal("rbd", spec!.Kind);
        Assert.Equal(new RbdLocation("rbd", "vm1", null, null), spec.Rbd);
        Assert.True(spec.DirectIo);
        Assert.Null(spec.Path);
        Assert.Equal("rbd:rbd/vm1", spec.ToSpec());
        Assert.True(BackendSpec.TryParse("rbd:pool1/img,conf=/etc/ceph/c2.conf,id=blk,cache=writeback", out spec, out _));
        var options = spec!.ToRbdOptions(readOnly: true, blockSize: 4096);
        Assert.Equal(("pool1", "img", "/etc/ceph/c2.conf", "blk", true, true, 4096u),
            (options.Pool, options.Image, options.ConfPath, options.User, options.Writeback, options.ReadOnly, options.BlockSize));
        Assert.Equal("rbd:pool1/img,conf=/etc/ceph/c2.conf,id=blk,cache=writeback", spec.ToSpec());
        Assert.False(spec.CanCreate);
        Assert.Equal(BackendSpec.TryParse(spec.ToSpec(), out var again, out _) ? spec : null, again);
    }

    [Theory]
    [InlineData("rbd:", "expected rbd:POOL/IMAGE")]
    [InlineData("rbd:vm1", "expected rbd:POOL/IMAGE")]
    [InlineData("rbd:/vm1", "expected rbd:POOL/IMAGE")]
    [InlineData("rbd:a/b/c", "expected rbd:POOL/IMAGE")]
    [InlineData("rbd:rbd/vm1@snap", "expected rbd:POOL/IMAGE")]
    [InlineData("rbd:rbd/vm1,cache=unsafe", "bad option 'cache=unsafe'")]
    [InlineData("rbd:rbd/vm1,id=client.admin", "bad option 'id=client.admin'")]
    [InlineData("rbd:rbd/vm1,conf=", "bad option 'conf='")]
    [InlineData("rbd:rbd/vm1,keyring=/x", "bad option 'keyring=/x'")]
    public void Bad_rbd_backends_are_refused_with_the_reason(string text, string reason)
    {
        Assert.False(BackendSpec.TryParse(text, out _, out var error));
        Assert.Contains(reason, error);
    }

    [Theory]
    [InlineData("nbd:nbd+unix:///exp?socket=/run/nbd.sock", "nbd+unix:///exp?socket=/run/nbd.sock")]
    [InlineData("nbd:nbd+unix:///?socket=/tmp/x.sock", "nbd+unix:///?socket=/tmp/x.sock")]
    [InlineData("nbd:nbd://storage1:10809/vm1,a", "nbd://storage1:10809/vm1,a")]
    public void Nbd_backends_take_the_whole_uri_and_print_back(string text, string uri)
    {
        Assert.True(BackendSpec.TryParse(text, out var spec, out var error), error);
        Assert.Equal("nbd", spec!.Kind);
        Assert.Equal(uri, spec.NbdUri);
        Assert.Null(spec.Path);
        Assert.False(spec.CanCreate);
        Assert.Equal(text, spec.ToSpec());
        Assert.Equal(text, spec.Medium);
        var options = spec.ToNbdOptions(readOnly: true, blockSize: 4096);
        Assert.Equal((uri, true, 4096u), (options.Uri, options.ReadOnly, options.BlockSize));
        Assert.Equal(BackendSpec.TryParse(spec.ToSpec(), out var again, out _) ? spec : null, again);
    }

    [Theory]
    [InlineData("nbd:")]
    [InlineData("nbd:/tmp/x.sock")]
    [InlineData("nbd:http://host/x")]
    [InlineData("nbd:nbd://")]
    public void Bad_nbd_backends_are_refused_with_an_example(string text)
    {
        Assert.False(BackendSpec.TryParse(text, out _, out var error));
        Assert.Contains("expected nbd:URI", error);
    }
}
