#!/bin/sh
# Guest job (busybox sh) of the live-migration test: the VM moves between two QEMU processes (export A -> export B of
# one shared disk -> back to A) while this job runs fio 4k random writes with crc32c verify on a file in ext4, pass after
# pass, for E2E_MIGRATION_WINDOW seconds (default 60) after E2E-MIGRATE-READY. A checksummed file written before the
# first migration must read back unchanged, and the filesystem must check clean, on the final destination.
set -eu
dev=${E2E_DEV:-/dev/vda}
mnt=/mnt/e2e
window=${E2E_MIGRATION_WINDOW:-60}
mkdir -p "$mnt"
/sbin/mkfs.ext4 -F -q -L mig "$dev"
mount -t ext4 "$dev" "$mnt"
head -c 8388608 /dev/urandom > "$mnt/before.bin"
(cd "$mnt" && sha256sum before.bin > before.sha256)
sync
echo "E2E-MIGRATE-READY"
start=$(date +%s)
pass=0
while :; do
    pass=$((pass + 1))
    fio --name="mig$pass" --filename="$mnt/fio.dat" --size=16M --direct=1 --ioengine=libaio --rw=randwrite --bs=4k \
        --iodepth=16 --verify=crc32c --verify_fatal=1 --do_verify=1 --end_fsync=1 --eta=never --output=/tmp/fio.out \
        || { cat /tmp/fio.out; echo "migration: FAIL in fio pass $pass"; exit 1; }
    grep -q "err= 0" /tmp/fio.out || { cat /tmp/fio.out; echo "migration: FAIL: pass $pass reported an error"; exit 1; }
    elapsed=$(( $(date +%s) - start ))
    echo "migration: fio pass $pass (16 MiB in ext4, verified) ok after ${elapsed}s"
    [ "$elapsed" -lt "$window" ] || break
done
echo "E2E-MIGRATION-IO-DONE passes=$pass"
(cd "$mnt" && sha256sum -c before.sha256) || { echo "migration: FAIL: the file written before migrating changed"; exit 1; }
umount "$mnt"
sync
echo 3 > /proc/sys/vm/drop_caches
/sbin/e2fsck -fn "$dev" || { echo "migration: FAIL: e2fsck reported problems"; exit 1; }
mount -t ext4 "$dev" "$mnt"
(cd "$mnt" && sha256sum -c before.sha256) || { echo "migration: FAIL: checksum after remount"; exit 1; }
umount "$mnt"
echo "migration: $pass fio passes, 0 verify errors, ext4 clean, data written before migrating intact"
