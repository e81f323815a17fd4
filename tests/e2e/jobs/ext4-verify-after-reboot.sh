#!/bin/sh
# Guest job (busybox sh): second boot against the same, still running target. No
# mkfs: the filesystem ext4-write.sh left on the disk must be clean and data.bin
# must still match the checksum stored next to it. Proves the target kept the data
# and served a new VM (new connection, new memory table, rings from index 0) after
# the previous one disconnected.
set -eu
dev=${E2E_DEV:-/dev/vda}
mnt=/mnt/e2e
mkdir -p "$mnt"

echo "ext4-verify-after-reboot: e2fsck -fn"
/sbin/e2fsck -fn "$dev" || { echo "ext4-verify-after-reboot: FAIL: e2fsck reported problems (rc=$?)"; exit 1; }

# Read-only (noload: do not even replay a journal): this boot must not change the disk.
mount -t ext4 -o ro,noload "$dev" "$mnt"
ls -l "$mnt"
size=$(stat -c %s "$mnt/data.bin")
[ "$size" -eq 33554432 ] || { echo "ext4-verify-after-reboot: FAIL: data.bin is $size bytes"; exit 1; }
echo "ext4-verify-after-reboot: stored checksum: $(cat "$mnt/data.bin.sha256")"
(cd "$mnt" && sha256sum -c data.bin.sha256) || { echo "ext4-verify-after-reboot: FAIL: checksum mismatch"; exit 1; }
umount "$mnt"
echo "ext4-verify-after-reboot: OK"
