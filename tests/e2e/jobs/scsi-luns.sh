#!/bin/sh
# Guest job (busybox sh) for a vhost-user-scsi controller with several LUNs (run-e2e.sh starts a
# second target from a config with: target 0 LUN 0 ram 256 MiB, target 0 LUN 1 ram 512 MiB with
# 4 KiB blocks, target 1 LUN 0 ram 64 MiB read-only). Checks:
#  1. the three LUNs appear as three disks at the right H:C:T:L, with their sizes, block sizes,
#     distinct VPD 80h serials and 83h identifiers, rotational=0, discard (UNMAP) on the
#     writable ones, ro=1 on the read-only one; the values are printed;
#  2. fio random writes + crc32c verify on both writable LUNs at once (I/O to one must not
#     disturb the other), then mkfs.ext4 + file checksum + e2fsck on LUN 1;
#  3. discard (UNMAP) makes blocks read back as zeros (LBPRZ) on both block sizes;
#  4. MODE SELECT: switching LUN 0's cache to write through and back is reflected in MODE SENSE;
#  5. a write to the read-only LUN fails (DATA PROTECT) and reading it works.
set -eu
fail() { echo "scsi-luns: FAIL: $*"; exit 1; }

# SCSI scanning is asynchronous: wait until all three LUNs have a disk.
disk_of() { ls "/sys/bus/scsi/devices/$1/block" 2>/dev/null | head -n1; }
i=0
while [ $i -lt 300 ]; do
    a=$(disk_of 0:0:0:0); b=$(disk_of 0:0:0:1); c=$(disk_of 0:0:1:0)
    [ -n "$a" ] && [ -n "$b" ] && [ -n "$c" ] && [ -b "/dev/$a" ] && [ -b "/dev/$b" ] && [ -b "/dev/$c" ] && break
    sleep 0.1; i=$((i + 1))
done
echo "scsi-luns: scsi devices: $(ls /sys/bus/scsi/devices | tr '\n' ' ')"
echo "scsi-luns: block devices: $(ls /sys/block | tr '\n' ' ')"
[ -n "$a" ] && [ -n "$b" ] && [ -n "$c" ] || fail "expected disks at 0:0:0:0, 0:0:0:1 and 0:0:1:0, got '$a' '$b' '$c'"
ndisks=$(ls -d /sys/block/sd* | wc -l)
[ "$ndisks" -eq 3 ] || fail "expected exactly 3 SCSI disks, found $ndisks"

# VPD page 80h is "00 80 00 len" + the serial; page 83h holds the designators.
serial_of() { tail -c +5 "/sys/block/$1/device/vpd_pg80" | tr -d '\000'; }
# First designator of page 83h: "type nibble:NAA nibble", e.g. "3:3" for our NAA 3 (locally assigned).
naa_of() { od -An -tx1 -N9 "/sys/block/$1/device/vpd_pg83" | awk '{ print substr($6, 2, 1) ":" substr($9, 1, 1) }'; }
show() {
    d=$1; q=/sys/block/$d/queue
    echo "scsi-luns: $d ($(basename "$(readlink -f /sys/block/$d/device)")): size_sectors=$(cat /sys/block/$d/size)" \
        "logical_block_size=$(cat $q/logical_block_size) rotational=$(cat $q/rotational)" \
        "discard_max_bytes=$(cat $q/discard_max_bytes) write_zeroes_max_bytes=$(cat $q/write_zeroes_max_bytes)" \
        "write_cache=$(cat $q/write_cache | tr ' ' _) ro=$(cat /sys/block/$d/ro) serial=$(serial_of "$d")" \
        "wwid=$(cat /sys/block/$d/device/wwid 2>/dev/null || echo '?') pg83_first=$(naa_of "$d")" \
        "vendor=$(cat /sys/block/$d/device/vendor) model=$(cat /sys/block/$d/device/model)" \
        "provisioning_mode=$(cat /sys/block/$d/device/scsi_disk/*/provisioning_mode 2>/dev/null || echo '?')"
}
for d in "$a" "$b" "$c"; do show "$d"; done
for d in "$a" "$b" "$c"; do
    [ "$(cat /sys/block/$d/queue/rotational)" = 0 ] || fail "$d is rotational"
    # (sysfs binary attributes report size 0: read them instead of testing -s)
    [ -n "$(serial_of "$d")" ] || fail "$d has no VPD page 80h"
    [ -n "$(od -An -tx1 "/sys/block/$d/device/vpd_pg83" 2>/dev/null)" ] || fail "$d has no VPD page 83h"
done
[ "$(cat /sys/block/$a/size)" -eq 524288 ] || fail "$a: expected 256 MiB"
[ "$(cat /sys/block/$b/size)" -eq 1048576 ] || fail "$b: expected 512 MiB"
[ "$(cat /sys/block/$c/size)" -eq 131072 ] || fail "$c: expected 64 MiB"
[ "$(cat /sys/block/$b/queue/logical_block_size)" -eq 4096 ] || fail "$b: expected 4 KiB logical blocks"
[ "$(serial_of "$a")" = "E2E-LUN0" ] || fail "$a: serial '$(serial_of "$a")' != E2E-LUN0"
[ "$(serial_of "$b")" = "E2E-LUN1" ] || fail "$b: serial '$(serial_of "$b")' != E2E-LUN1"
wa=$(cat /sys/block/$a/device/wwid); wb=$(cat /sys/block/$b/device/wwid); wc=$(cat /sys/block/$c/device/wwid)
[ "$wa" != "$wb" ] && [ "$wa" != "$wc" ] && [ "$wb" != "$wc" ] || fail "identifiers are not distinct: $wa / $wb / $wc"
# Linux prefers the T10 vendor ID designator for the wwid over a locally assigned NAA; the NAA comes first.
for d in "$a" "$b" "$c"; do [ "$(naa_of "$d")" = "3:3" ] || fail "$d: page 83h does not start with an NAA 3 designator ($(naa_of "$d"))"; done
for d in "$a" "$b"; do
    [ "$(cat /sys/block/$d/queue/discard_max_bytes)" -gt 0 ] || fail "$d: no discard"
    [ "$(cat /sys/block/$d/ro)" = 0 ] || fail "$d is read-only"
done
[ "$(cat /sys/block/$c/ro)" = 1 ] || fail "$c: expected read-only (WP)"

echo "scsi-luns: fio verify on $a and $b at the same time"
common="--direct=1 --ioengine=libaio --eta=never --verify=crc32c --verify_fatal=1 --do_verify=1 --end_fsync=1"
# shellcheck disable=SC2086
fio $common --name=lun0 --filename=/dev/$a --rw=randwrite --bs=4k --iodepth=8 --size=32M \
            --name=lun1 --filename=/dev/$b --rw=randwrite --bssplit=4k/50:64k/50 --iodepth=8 --size=64M

echo "scsi-luns: UNMAP reads back zeros"
dd if=/dev/urandom of=/tmp/pattern bs=64k count=1 2>/dev/null
dd if=/tmp/pattern of=/dev/$a bs=64k seek=100 oflag=direct 2>/dev/null
blkdiscard -o $((100 * 65536)) -l 65536 /dev/$a
zeros=$(dd if=/dev/$a bs=64k skip=100 count=1 iflag=direct 2>/dev/null | tr -d '\000' | wc -c)
[ "$zeros" -eq 0 ] || fail "$a: discarded range does not read as zeros ($zeros non-zero bytes)"
dd if=/tmp/pattern of=/dev/$b bs=64k seek=10 oflag=direct 2>/dev/null
blkdiscard -o $((10 * 65536)) -l 65536 /dev/$b
zeros=$(dd if=/dev/$b bs=64k skip=10 count=1 iflag=direct 2>/dev/null | tr -d '\000' | wc -c)
[ "$zeros" -eq 0 ] || fail "$b: discarded range does not read as zeros ($zeros non-zero bytes)"

echo "scsi-luns: MODE SELECT write cache off and on"
ct=$(ls -d /sys/block/$a/device/scsi_disk/*)/cache_type
echo "scsi-luns: cache_type $(cat "$ct")"
echo "write through" > "$ct"
[ "$(cat "$ct")" = "write through" ] || fail "cache_type after MODE SELECT: $(cat "$ct")"
[ "$(cat /sys/block/$a/queue/write_cache)" = "write through" ] || fail "queue write_cache did not follow"
echo "write back" > "$ct"
[ "$(cat "$ct")" = "write back" ] || fail "cache_type after second MODE SELECT: $(cat "$ct")"

echo "scsi-luns: ext4 on $b"
mkdir -p /mnt/l1
/sbin/mkfs.ext4 -F -q /dev/$b
mount -t ext4 /dev/$b /mnt/l1
head -c 8388608 /dev/urandom > /mnt/l1/data.bin
sum=$(sha256sum /mnt/l1/data.bin | cut -d' ' -f1)
umount /mnt/l1
sync; echo 3 > /proc/sys/vm/drop_caches
/sbin/e2fsck -fn /dev/$b || fail "e2fsck on $b reported problems"
mount -t ext4 /dev/$b /mnt/l1
[ "$(sha256sum /mnt/l1/data.bin | cut -d' ' -f1)" = "$sum" ] || fail "checksum mismatch on $b"
umount /mnt/l1

echo "scsi-luns: read-only LUN"
dd if=/dev/$c of=/dev/null bs=64k count=16 iflag=direct 2>/dev/null || fail "reading $c failed"
# The kernel refuses writes to a WP disk itself; bypass that and send the WRITE: it must fail.
blockdev --setrw /dev/$c 2>/dev/null || true
if dd if=/tmp/pattern of=/dev/$c bs=64k count=1 oflag=direct 2>/dev/null; then
    fail "a write to read-only $c succeeded"
fi
dmesg | grep -i "data protect\|write protect" | tail -n 3 || true
echo "scsi-luns: OK"
