#!/bin/sh
# Helpers for guest jobs (busybox sh): run-guest.sh puts this file into every guest as /job-lib.sh; a job sources it
# with `. /job-lib.sh` after setting P, the prefix of its console lines.

run() {  # run CMD...: prints "$P: $ CMD" and its output; the output is in $OUT, the exit status in $RC
    echo "$P: \$ $*"
    RC=0
    OUT=$("$@" 2>&1) || RC=$?
    echo "$OUT" | sed "s/^/$P:   /"
    echo "$P:   (exit $RC)"
}

# fio_verify_pass N: one pass on $dev of 2 jobs x 8 MiB of 4k random writes at queue depth 16, then the crc32c verify
# reads (verify_fatal). Size-bound, not time_based: fio skips the verify phase when a runtime limit ends the write
# phase. Pass N gets its own seed and area, so a write lost meanwhile cannot be hidden by an older pass's identical
# data. Any error prints fio's output and ends the job (exit 1).
fio_verify_pass() {
    pin=""
    if [ "$(nproc)" -ge 2 ]; then pin="--cpus_allowed=0-1 --cpus_allowed_policy=split"; fi
    # shellcheck disable=SC2086
    if ! fio --name="$P$1" --filename="$dev" --direct=1 --ioengine=libaio --numjobs=2 \
        --group_reporting --eta=never --verify=crc32c --verify_fatal=1 --do_verify=1 \
        --end_fsync=1 $pin --rw=randwrite --bs=4k --iodepth=16 --randseed="$1" \
        --offset=$(( ($1 % 4) * 16 ))M --size=8M --offset_increment=64M > /tmp/fio.out 2>&1; then
        cat /tmp/fio.out
        echo "$P: FAIL: fio pass $1"
        exit 1
    fi
    grep -q "err= 0" /tmp/fio.out || { cat /tmp/fio.out; echo "$P: FAIL: fio pass $1 reported errors"; exit 1; }
}

# fio_verify_window SECONDS MARKER: back-to-back fio_verify_pass for SECONDS, between the lines "MARKER-IO-START" and
# "MARKER-IO-DONE passes=N" (the runner times its faults from them); the number of passes is left in $pass.
fio_verify_window() {
    echo "$2-IO-START"
    start=$(date +%s)
    pass=0
    while [ $(( $(date +%s) - start )) -lt "$1" ]; do
        pass=$((pass + 1))
        t0=$(date +%s)
        fio_verify_pass "$pass"
        echo "$P: fio pass $pass: 2 x 8 MiB written and verified, 0 errors, $(( $(date +%s) - t0 ))s"
    done
    echo "$2-IO-DONE passes=$pass"
}
