#!/bin/sh
# Guest job for rbd-osd-fault (run-e2e.sh --backend rbd): back-to-back fio passes of 4k random writes + crc32c
# verify (verify_fatal=1) on both queues for a fixed window while the runner kills the cluster's only OSD, keeps it
# down a few seconds and starts it again; then one more pass with the cluster settled.
# Prints "E2E-RBD-FAULT-IO-START" when the window begins (the runner times the OSD kill from it) and
# "E2E-RBD-FAULT-IO-DONE passes=N" when it ends. A request the target failed while the OSD was away would show
# up as a fio error (verify_fatal and err=) or as a kernel "I/O error" line: both fail the job. Needs 256 MiB.
set -eu
dev=${E2E_DEV:-/dev/vda}
window=${E2E_RBD_FAULT_WINDOW_S:-15}
say() { echo "rbd-osd-fault: $*"; }

pin=""
if [ "$(nproc)" -ge 2 ]; then pin="--cpus_allowed=0-1 --cpus_allowed_policy=split"; fi
# One pass: 2 jobs x 8 MiB of 4k writes at queue depth 16, then the verify reads. Size-bound, not time_based:
# fio skips the verify phase when a runtime limit ends the write phase. Each pass gets its own seed and area, so a
# write lost while the OSD was away cannot be hidden by an older pass's identical data.
fio_pass() {
    # shellcheck disable=SC2086
    if ! fio --name="osdfault$1" --filename="$dev" --direct=1 --ioengine=libaio --numjobs=2 \
        --group_reporting --eta=never --verify=crc32c --verify_fatal=1 --do_verify=1 \
        --end_fsync=1 $pin --rw=randwrite --bs=4k --iodepth=16 --randseed="$1" \
        --offset=$(( ($1 % 4) * 16 ))M --size=8M --offset_increment=64M > /tmp/fio.out 2>&1; then
        cat /tmp/fio.out
        say "FAIL: fio pass $1"
        exit 1
    fi
    grep -q "err= 0" /tmp/fio.out || { cat /tmp/fio.out; say "FAIL: fio pass $1 reported errors"; exit 1; }
}

echo "E2E-RBD-FAULT-IO-START"
start=$(date +%s)
pass=0
while [ $(( $(date +%s) - start )) -lt "$window" ]; do
    pass=$((pass + 1))
    t0=$(date +%s)
    fio_pass "$pass"
    say "fio pass $pass: 2 x 8 MiB written and verified, 0 errors, $(( $(date +%s) - t0 ))s"
done
echo "E2E-RBD-FAULT-IO-DONE passes=$pass"
pass=$((pass + 1))
fio_pass "$pass"
say "fio pass $pass (after the OSD restart): verified, 0 errors"

# The block layer logs every failed request ("I/O error, dev vda, sector ..."); fio retries nothing, but check the
# kernel's view too, so an error on a request fio did not own (none here, but cheap) cannot pass unseen.
errors=$(dmesg | grep -c "I/O error" || true)
if [ "$errors" -ne 0 ]; then
    dmesg | grep "I/O error" | head -n 5
    say "FAIL: the kernel logged $errors I/O error(s)"
    exit 1
fi
say "no I/O errors in the kernel log"
