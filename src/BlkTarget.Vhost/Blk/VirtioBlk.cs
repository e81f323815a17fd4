namespace BlkTarget.Vhost.Blk;

/// <summary>virtio-blk constants (virtio 1.2, 5.2).</summary>
public static class VirtioBlk
{
    public const int FeatureSizeMax = 1;
    public const int FeatureSegMax = 2;
    public const int FeatureGeometry = 4;
    public const int FeatureRo = 5;
    public const int FeatureBlkSize = 6;
    public const int FeatureFlush = 9;
    public const int FeatureTopology = 10;
    public const int FeatureConfigWce = 11;
    public const int FeatureMq = 12;
    public const int FeatureDiscard = 13;
    public const int FeatureWriteZeroes = 14;

    public const uint TypeIn = 0;
    public const uint TypeOut = 1;
    public const uint TypeFlush = 4;
    public const uint TypeGetId = 8;
    public const uint TypeDiscard = 11;
    public const uint TypeWriteZeroes = 13;

    public const byte StatusOk = 0;
    public const byte StatusIoErr = 1;
    public const byte StatusUnsupported = 2;

    public const int HeaderLength = 16;
    public const int IdLength = 20;
    public const int SectorSize = 512;
    public const int SectorShift = 9;
    /// <summary>struct virtio_blk_discard_write_zeroes: {u64 sector, u32 num_sectors, u32 flags}.</summary>
    public const int RangeSegmentLength = 16;
    public const uint RangeFlagUnmap = 1;
}
