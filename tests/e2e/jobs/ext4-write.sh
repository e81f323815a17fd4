#!/bin/sh
# Guest job (busybox sh): make an ext4 filesystem on the disk, write 32 MiB of
# random data, and check it survives umount + fsck + remount with caches dropped.
# Leaves the filesystem (with data.bin and its checksum data.bin.sha256) on the
# disk for ext4-verify-after-reboot.sh, which runs in a second, fresh guest.
set -eu
dev=${E2E_DEV:-/dev/vda}
mnt=/mnt/e2e
mkdir -p "$mnt"

# Flush dirty data and forget every cached page of the disk, so the next read
# really comes from the target, not from guest memory.
drop_caches() {
    sync
    blockdev --flushbufs "$dev"
    echo 3 > /proc/sys/vm/drop_caches
}

# Full path: busybox would otherwise run its own minimal mke2fs applet.
echo "ext4-write: mkfs.ext4 $dev"
/sbin/mkfs.ext4 -F -q -L e2e "$dev"
mount -t ext4 "$dev" "$mnt"

echo "ext4-write: writing 32 MiB of random data"
head -c 33554432 /dev/urandom > "$mnt/data.bin"
size=$(stat -c %s "$mnt/data.bin")
[ "$size" -eq 33554432 ] || { echo "ext4-write: FAIL: wrote $size bytes"; exit 1; }
sum=$(sha256sum "$mnt/data.bin" | cut -d' ' -f1)
# Store the checksum inside the filesystem for the second boot.
(cd "$mnt" && sha256sum data.bin > data.bin.sha256)
echo "ext4-write: sha256 $sum"
sync
umount "$mnt"
drop_caches

echo "ext4-write: e2fsck -fn"
/sbin/e2fsck -fn "$dev" || { echo "ext4-write: FAIL: e2fsck reported problems (rc=$?)"; exit 1; }

drop_caches
mount -t ext4 "$dev" "$mnt"
now=$(sha256sum "$mnt/data.bin" | cut -d' ' -f1)
if [ "$now" != "$sum" ]; then
    echo "ext4-write: FAIL: checksum after remount $now != $sum"
    exit 1
fi
# The stored checksum file must have survived too (cheaper than a third hash pass).
if ! grep -qx "$sum  data.bin" "$mnt/data.bin.sha256"; then
    echo "ext4-write: FAIL: data.bin.sha256 is corrupt: $(cat "$mnt/data.bin.sha256")"
    exit 1
fi
umount "$mnt"
sync
echo "ext4-write: OK"
