using BlkTarget.Storage;
using BlkTarget.Storage.Ram;
using BlkTarget.Vhost.Scsi;

namespace BlkTarget.Vhost.Tests.Scsi;

/// <summary>
/// What a guest reads from INQUIRY, byte for byte, for fixed LUN configurations. The layouts are SPC-4's
/// (standard INQUIRY data 6.6.2, VPD pages 00h 7.8.13, 80h 7.8.15, 83h 7.8.6) and SBC-3's (B0h block limits,
/// B1h block device characteristics, B2h logical block provisioning); the NAA values are the FNV-1a hash of
/// "device/serial/target/lun" that guests already use in /dev/disk/by-id, so they must never change.
/// Every expected byte is written out here, not produced by the code under test.
/// </summary>
public sealed class InquiryGoldenTests : IDisposable
{
    private readonly List<ScsiHarness> _harnesses = [];

    public void Dispose()
    {
        foreach (var h in _harnesses) h.Dispose();
    }

    /// <summary>Device "test-scsi", target 1 LUN 2: a writable 64 MiB RAM LUN with 4096-byte blocks, serial VM1-DATA.</summary>
    private ScsiResult Thin(byte[] cdb) => Run(cdb, 1, 2, () => new RamDisk(64 << 20, 4096), "VM1-DATA");

    /// <summary>Device "test-scsi", target 0 LUN 0: a read-only 1 MiB RAM LUN with 512-byte blocks, serial RO-DISK.</summary>
    private ScsiResult ReadOnly(byte[] cdb) => Run(cdb, 0, 0, () => new RamDisk(1 << 20, 512, readOnly: true), "RO-DISK");

    private ScsiResult Run(byte[] cdb, byte target, ushort lun, Func<IBlockDevice> disk, string serial)
    {
        var h = new ScsiHarness(disks =>
        {
            var d = disk();
            disks.Add(d);
            return [new ScsiLunDefinition(target, lun, d, serial)];
        });
        _harnesses.Add(h);
        var result = h.Run(cdb, dataIn: 255, target: target, lun: lun);
        result.AssertGood();
        return result;
    }

    private static byte[] Returned(ScsiResult r) => r.Data[..(255 - (int)r.Resid)];

    private static readonly byte[] StandardInquiry =
    [
        0x00,                   // peripheral qualifier 000b, device type 00h (direct access block)
        0x00,                   // not removable
        0x06,                   // VERSION: SPC-4
        0x12,                   // HISUP, response data format 2
        0x5B,                   // additional length: 96 - 5
        0x00, 0x00,
        0x02,                   // CMDQUE
        .. "BLKTARGT"u8,        // T10 vendor identification
        .. "BlkTarget disk  "u8, // product identification
        .. "0001"u8,            // product revision level
        .. new byte[22],        // 36-55 vendor specific, 56-57 reserved
        0x00, 0xA0,             // version descriptor: SAM-5 (no version claimed)
        0x04, 0x60,             // SPC-4 (no version claimed)
        0x04, 0xC0,             // SBC-3 (no version claimed)
        .. new byte[32],        // 64-95: version descriptors 4-8, reserved
    ];

    [Fact]
    public void Standard_inquiry_data()
    {
        Assert.Equal(96, StandardInquiry.Length);
        Assert.Equal(StandardInquiry, Returned(Thin(Cdbs.Inquiry())));
        Assert.Equal(StandardInquiry, Returned(ReadOnly(Cdbs.Inquiry())));
    }

    [Fact]
    public void Vpd_00_supported_pages()
    {
        byte[] expected = [0x00, 0x00, 0x00, 0x07, 0x00, 0x80, 0x83, 0x86, 0xB0, 0xB1, 0xB2];
        Assert.Equal(expected, Returned(Thin(Cdbs.Inquiry(evpd: true, page: 0x00))));
    }

    [Fact]
    public void Vpd_80_unit_serial_number()
    {
        byte[] expected = [0x00, 0x80, 0x00, 0x08, .. "VM1-DATA"u8];
        Assert.Equal(expected, Returned(Thin(Cdbs.Inquiry(evpd: true, page: 0x80))));
    }

    [Fact]
    public void Vpd_83_device_identification_holds_the_naa_and_t10_vendor_designators()
    {
        byte[] expected =
        [
            0x00, 0x83, 0x00, 0x28,
            // NAA designator: code set binary, association LU, type 3h NAA, length 8;
            // NAA 3h (locally assigned) 0x30C04B283DA09275
            0x01, 0x03, 0x00, 0x08, 0x30, 0xC0, 0x4B, 0x28, 0x3D, 0xA0, 0x92, 0x75,
            // T10 vendor ID designator: code set ASCII, association LU, type 1h, length 16: vendor + serial
            0x02, 0x01, 0x00, 0x10, .. "BLKTARGT"u8, .. "VM1-DATA"u8,
            // relative target port identifier: code set binary, PIV 0, association 01b (target port), type 4h,
            // length 4: reserved, port 1
            0x01, 0x14, 0x00, 0x04, 0x00, 0x00, 0x00, 0x01,
        ];
        Assert.Equal(expected, Returned(Thin(Cdbs.Inquiry(evpd: true, page: 0x83))));
    }

    [Fact]
    public void Vpd_83_of_another_lun_and_serial()
    {
        byte[] expected =
        [
            0x00, 0x83, 0x00, 0x27,
            0x01, 0x03, 0x00, 0x08, 0x38, 0x34, 0x5C, 0xCB, 0xD7, 0xE2, 0x2C, 0x9E,   // NAA 0x38345CCBD7E22C9E
            0x02, 0x01, 0x00, 0x0F, .. "BLKTARGT"u8, .. "RO-DISK"u8,
            0x01, 0x14, 0x00, 0x04, 0x00, 0x00, 0x00, 0x01,
        ];
        Assert.Equal(expected, Returned(ReadOnly(Cdbs.Inquiry(evpd: true, page: 0x83))));
    }

    [Fact]
    public void Vpd_86_extended_inquiry_data_claims_simple_tasks_and_a_volatile_cache_only()
    {
        byte[] expected =
        [
            0x00, 0x86, 0x00, 0x3C,
            0x00,                   // ACTIVATE MICROCODE 0, SPT 0, GRD_CHK/APP_CHK/REF_CHK 0: no protection
            0x01,                   // UASK_SUP 0, GROUP_SUP 0, PRIOR_SUP 0, HEADSUP 0, ORDSUP 0, SIMPSUP 1
            0x01,                   // WU_SUP 0, CRD_SUP 0, NV_SUP 0, V_SUP 1
            0x01,                   // P_I_I_SUP 0, LUICLR 1 (SPC-4: shall be one)
            .. new byte[56],        // 8-63: no microcode download, no self-test, no policy, sense length not reported
        ];
        Assert.Equal(expected, Returned(Thin(Cdbs.Inquiry(evpd: true, page: 0x86))));
        Assert.Equal(expected, Returned(ReadOnly(Cdbs.Inquiry(evpd: true, page: 0x86))));
    }

    [Fact]
    public void Two_luns_with_the_same_serial_get_different_naa_identifiers()
    {
        var h = new ScsiHarness(disks =>
        {
            var a = new RamDisk(1 << 20);
            var b = new RamDisk(1 << 20);
            disks.AddRange([a, b]);
            return [new ScsiLunDefinition(0, 0, a, "SAME"), new ScsiLunDefinition(0, 1, b, "SAME")];
        });
        _harnesses.Add(h);
        byte[] Naa(ushort lun) => h.Run(Cdbs.Inquiry(evpd: true, page: 0x83), dataIn: 255, lun: lun).Data[8..16];

        Assert.Equal([0x38, 0xBD, 0xD6, 0x49, 0x99, 0xFE, 0xBF, 0x69], Naa(0));
        Assert.Equal([0x38, 0xBD, 0xD5, 0x49, 0x99, 0xFE, 0xBD, 0xB6], Naa(1));
    }

    [Fact]
    public void Vpd_b0_block_limits_of_a_thin_4k_lun()
    {
        byte[] expected =
        [
            0x00, 0xB0, 0x00, 0x3C,
            0x01,                               // WSNZ
            0x10,                               // maximum compare and write length: 16 blocks (64 KiB)
            0x00, 0x01,                         // optimal transfer length granularity: 1 block
            0x00, 0x00, 0x08, 0x00,             // maximum transfer length: 2048 blocks (8 MiB)
            0x00, 0x00, 0x00, 0x00,             // optimal transfer length: not reported
            0x00, 0x00, 0x00, 0x00,             // maximum prefetch length
            0x00, 0x04, 0x00, 0x00,             // maximum unmap LBA count: 262144 blocks (1 GiB)
            0x00, 0x00, 0x00, 0x20,             // maximum unmap block descriptor count: 32
            0x00, 0x00, 0x00, 0x01,             // optimal unmap granularity: 1 block
            0x00, 0x00, 0x00, 0x00,             // UGAVALID 0, unmap granularity alignment
            0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00,   // maximum write same length: 262144 blocks
            .. new byte[20],                    // 44-63 reserved
        ];
        Assert.Equal(expected, Returned(Thin(Cdbs.Inquiry(evpd: true, page: 0xB0))));
    }

    [Fact]
    public void Vpd_b0_block_limits_of_a_read_only_512_byte_lun_offer_no_unmap()
    {
        byte[] expected =
        [
            0x00, 0xB0, 0x00, 0x3C,
            0x01, 0x80, 0x00, 0x01,             // WSNZ, maximum compare and write length: 128 blocks (64 KiB)
            0x00, 0x00, 0x40, 0x00,             // maximum transfer length: 16384 blocks (8 MiB)
            0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00,             // maximum unmap LBA count 0: UNMAP not implemented
            0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x20, 0x00, 0x00,   // maximum write same length: 2097152 blocks
            .. new byte[20],
        ];
        Assert.Equal(expected, Returned(ReadOnly(Cdbs.Inquiry(evpd: true, page: 0xB0))));
    }

    [Fact]
    public void Vpd_b1_block_device_characteristics_say_non_rotating()
    {
        byte[] expected = [0x00, 0xB1, 0x00, 0x3C, 0x00, 0x01, .. new byte[58]];   // medium rotation rate 0001h
        Assert.Equal(expected, Returned(Thin(Cdbs.Inquiry(evpd: true, page: 0xB1))));
    }

    [Fact]
    public void Vpd_b2_logical_block_provisioning_of_a_thin_lun()
    {
        byte[] expected =
        [
            0x00, 0xB2, 0x00, 0x04,
            0x00,                               // threshold exponent
            0xE4,                               // LBPU, LBPWS, LBPWS10, LBPRZ (unmapped blocks read as zeros)
            0x02,                               // provisioning type 010b: thin
            0x00,
        ];
        Assert.Equal(expected, Returned(Thin(Cdbs.Inquiry(evpd: true, page: 0xB2))));
    }

    [Fact]
    public void Vpd_b2_of_a_read_only_lun_is_fully_provisioned_without_unmap()
    {
        byte[] expected = [0x00, 0xB2, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00];
        Assert.Equal(expected, Returned(ReadOnly(Cdbs.Inquiry(evpd: true, page: 0xB2))));
    }

    [Fact]
    public void Read_capacity_16_of_a_thin_4k_lun()
    {
        byte[] expected =
        [
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x3F, 0xFF,   // last LBA 16383 (64 MiB / 4096 - 1)
            0x00, 0x00, 0x10, 0x00,                           // block length 4096
            0x00, 0x00,                                       // no protection; 1 logical block per physical block
            0xC0, 0x00,                                       // LBPME, LBPRZ; lowest aligned LBA 0
            .. new byte[16],
        ];
        Assert.Equal(expected, Returned(Thin(Cdbs.ReadCapacity16())));
    }
}
