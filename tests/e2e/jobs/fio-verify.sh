#!/bin/sh
# Guest job (busybox sh): data-integrity check of the raw disk with fio.
#  1. 4 KiB random writes, 2 jobs pinned to different vCPUs (so blk-mq submits on
#     both hardware queues), each on its own 32 MiB region, then read back and
#     checked with crc32c; end_fsync sends a FLUSH.
#  2. The same with a mix of block sizes (4 KiB .. 512 KiB): exercises multi-
#     descriptor requests and the guest splitting requests to the advertised limits.
# Also checks the disk has $E2E_QUEUES hw queues and that both queues completed I/O
# (per-queue interrupt counters in /proc/interrupts).
set -eu
dev=${E2E_DEV:-/dev/vda}
name=${E2E_NAME:-${dev#/dev/}}
want=${E2E_QUEUES:-1}

# The regions below reach up to 768 MiB.
sectors=$(cat /sys/block/"$name"/size)
if [ "$sectors" -lt 1572864 ]; then
    echo "fio-verify: FAIL: disk has $sectors sectors, need at least 768 MiB"
    exit 1
fi

hwq=$(ls -d /sys/block/"$name"/mq/*/ | wc -l)
echo "fio-verify: $name has $hwq hw queue(s): $(ls /sys/block/"$name"/mq | tr '\n' ' ')(expected $want)"
if [ "$hwq" -ne "$want" ]; then
    echo "fio-verify: FAIL: expected $want hw queues, got $hwq"
    exit 1
fi

# Per-queue interrupt counts (sum over CPUs) for the disk's request virtqueues,
# e.g. "virtio0-req.0" (virtio-blk) or "virtio0-request" (virtio-scsi, the same name
# for every request queue: the IRQ number makes each line's key unique).
queue_irqs() {
    awk '$NF ~ /^virtio[0-9]+-req/ { n = 0; for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+$/) n += $i; else break; print $NF "@" $1, n }' /proc/interrupts
}
before=$(queue_irqs)

# Pin one job per CPU when we have two: blk-mq maps CPUs to hw queues, so this is
# what makes the I/O actually use both queues.
pin=""
if [ "$(nproc)" -ge 2 ]; then pin="--cpus_allowed=0-1 --cpus_allowed_policy=split"; fi

# fio warns "multiple writers may overwrite blocks that belong to other jobs" for
# numjobs>1 with verify: harmless here, offset_increment keeps the regions disjoint.
# --eta=never: no progress lines in the console log.
common="--filename=$dev --direct=1 --ioengine=libaio --numjobs=2 --group_reporting --eta=never
        --verify=crc32c --verify_fatal=1 --do_verify=1 --end_fsync=1 $pin"

echo "fio-verify: pass 1: 4k random writes + crc32c verify"
# offset_increment gives each job a disjoint region: with overlapping regions one
# job would verify blocks the other overwrote and report false corruption.
# shellcheck disable=SC2086
fio --name=rand4k $common --rw=randwrite --bs=4k --iodepth=16 \
    --offset=0 --size=32M --offset_increment=128M

echo "fio-verify: pass 2: mixed block sizes + crc32c verify"
# shellcheck disable=SC2086
fio --name=mixedbs $common --rw=randwrite --bssplit=4k/30:16k/20:64k/20:128k/20:512k/10 \
    --iodepth=8 --offset=512M --size=64M --offset_increment=192M

after=$(queue_irqs)
echo "fio-verify: request-queue interrupts before: $(echo "$before" | tr '\n' ' ')"
echo "fio-verify: request-queue interrupts after:  $(echo "$after" | tr '\n' ' ')"
if [ "$want" -gt 1 ] && [ "$(nproc)" -ge 2 ]; then
    # Every request queue must have completed something during the run.
    idle=$(echo "$before
$after" | awk '{ if ($1 in b) { if ($2 - b[$1] <= 0) print $1 } else b[$1] = $2 }')
    nq=$(echo "$after" | grep -c . || true)
    if [ "$nq" -lt "$want" ]; then
        echo "fio-verify: FAIL: found $nq request-queue interrupt lines, expected $want"
        exit 1
    fi
    if [ -n "$idle" ]; then
        echo "fio-verify: FAIL: queue(s) without completions: $idle"
        exit 1
    fi
fi
echo "fio-verify: OK"
