#!/bin/sh
# Guest job for target-restart (run-e2e.sh): while the runner kills the target with SIGKILL three times and
# restarts it once with SIGTERM (QEMU: -chardev ...,reconnect=1), run back-to-back fio passes of 4k random
# writes + crc32c verify (verify_fatal=1) on both queues for a fixed window, then one more pass with the target
# settled, then ext4: mkfs, 16 MiB of random data, umount, e2fsck -fn, remount, checksum.
# Prints "E2E-RESTART-IO-START" when the window begins (the runner times its restarts from it) and
# "E2E-RESTART-IO-DONE passes=N" when it ends. Needs 512 MiB of disk.
set -eu
dev=${E2E_DEV:-/dev/vda}
window=${E2E_RESTART_WINDOW_S:-30}
mnt=/mnt/e2e
P=target-restart
say() { echo "$P: $*"; }
. /job-lib.sh   # fio_verify_pass, fio_verify_window

fio_verify_window "$window" E2E-RESTART
pass=$((pass + 1))
fio_verify_pass "$pass"
say "fio pass $pass (after the restarts): verified, 0 errors"

drop_caches() {
    sync
    blockdev --flushbufs "$dev"
    echo 3 > /proc/sys/vm/drop_caches
}
mkdir -p "$mnt"
/sbin/mkfs.ext4 -F -q -L restart "$dev"
mount -t ext4 "$dev" "$mnt"
head -c 16777216 /dev/urandom > "$mnt/data.bin"
sum=$(sha256sum "$mnt/data.bin" | cut -d' ' -f1)
umount "$mnt"
drop_caches
/sbin/e2fsck -fn "$dev" > /tmp/fsck.out 2>&1 || { cat /tmp/fsck.out; say "FAIL: e2fsck reported problems"; exit 1; }
mount -t ext4 "$dev" "$mnt"
now=$(sha256sum "$mnt/data.bin" | cut -d' ' -f1)
umount "$mnt"
[ "$now" = "$sum" ] || { say "FAIL: checksum after remount $now != $sum"; exit 1; }
say "ext4: e2fsck clean, 16 MiB checksum matches after remount"
say "OK"
