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
say() { echo "target-restart: $*"; }

pin=""
if [ "$(nproc)" -ge 2 ]; then pin="--cpus_allowed=0-1 --cpus_allowed_policy=split"; fi
# One pass: 2 jobs x 8 MiB of 4k writes at queue depth 16, then the verify reads. Size-bound, not time_based:
# fio skips the verify phase when a runtime limit ends the write phase. Each pass its own seed and area.
fio_pass() {
    # shellcheck disable=SC2086
    if ! fio --name="restart$1" --filename="$dev" --direct=1 --ioengine=libaio --numjobs=2 \
        --group_reporting --eta=never --verify=crc32c --verify_fatal=1 --do_verify=1 \
        --end_fsync=1 $pin --rw=randwrite --bs=4k --iodepth=16 --randseed="$1" \
        --offset=$(( ($1 % 4) * 16 ))M --size=8M --offset_increment=64M > /tmp/fio.out 2>&1; then
        cat /tmp/fio.out
        say "FAIL: fio pass $1"
        exit 1
    fi
    grep -q "err= 0" /tmp/fio.out || { cat /tmp/fio.out; say "FAIL: fio pass $1 reported errors"; exit 1; }
}

echo "E2E-RESTART-IO-START"
start=$(date +%s)
pass=0
while [ $(( $(date +%s) - start )) -lt "$window" ]; do
    pass=$((pass + 1))
    t0=$(date +%s)
    fio_pass "$pass"
    say "fio pass $pass: 2 x 8 MiB written and verified, 0 errors, $(( $(date +%s) - t0 ))s"
done
echo "E2E-RESTART-IO-DONE passes=$pass"
pass=$((pass + 1))
fio_pass "$pass"
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
