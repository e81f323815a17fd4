#!/bin/sh
# Guest job (busybox sh): a guest reboot inside ONE QEMU process (run-guest.sh
# --allow-reboot). The reset makes QEMU stop the device over the same vhost-user
# connection (GET_VRING_BASE per queue) and then start it again from scratch
# (memory table, SET_VRING_NUM/ADDR/BASE 0, kick/call fds, ...). The job runs on
# every boot and tells the boots apart by a header in the first 4 KiB of the disk:
#
#   boot 1  (no header of THIS run): write 16 MiB of random data at 64 MiB, then the
#           header "run=<id> boot=1 sha256=<sum>", flush, `reboot -f`.
#   boot 2  (header of this run, boot=1): bump it to boot=2 first, check the disk
#           still has 2 hw queues, re-read the 16 MiB (O_DIRECT) and compare the
#           checksum, then a short fio 4k randwrite + crc32c verify on both queues;
#           exit 0 -> /init prints "E2E-RESULT: rc=0" and powers off.
#   boot 3+ (header of this run, boot>=2): the guest rebooted again -> fail.
#
# <id> is E2E_RUN_ID from job.env: run-guest.sh makes a new one per QEMU process, and
# the initramfs (so job.env) is the same on every boot of that process. A header left
# on the disk by an earlier run (other id) or by other tests is therefore never
# mistaken for "this is the second boot". Only boot 2 can report success, so the
# test passes only if the guest really rebooted once and the data survived it; a
# failing boot 1 ends the run with its non-zero rc; a reboot loop hits the boot
# limit above or, if the job never gets to run, run-guest.sh's wall-clock timeout.
set -eu
dev=${E2E_DEV:-/dev/vda}
name=${E2E_NAME:-${dev#/dev/}}
want=${E2E_QUEUES:-1}
run=${E2E_RUN_ID:-}
MAGIC=BLKTARGET-E2E-GUEST-REBOOT-V1
PAT_MIB_OFF=64      # pattern at 64 MiB ..
PAT_MIB_LEN=16      # .. 80 MiB; fio below uses 256 MiB .. 328 MiB
say() { echo "guest-reboot: $*"; }
die() { say "FAIL: $*"; exit 1; }

[ -n "$run" ] || die "E2E_RUN_ID is not set (run-guest.sh writes it into /job.env)"
sectors=$(cat /sys/block/"$name"/size)
[ "$sectors" -ge $((328 * 2048)) ] || die "disk has $sectors sectors, need at least 328 MiB"

# Header I/O with O_DIRECT: what we read is what the target has, not the page cache.
read_header() {
    dd if="$dev" bs=4096 count=1 iflag=direct 2>/dev/null | tr -d '\000' | head -n 1
}
write_header() {   # $1 = boot number, $2 = sha256 of the pattern
    printf '%s run=%s boot=%s sha256=%s\n' "$MAGIC" "$run" "$1" "$2" > /tmp/hdr
    # conv=sync pads to a full zero-filled 4 KiB block, as O_DIRECT needs.
    dd if=/tmp/hdr of=/tmp/hdr.blk bs=4096 count=1 conv=sync 2>/dev/null
    dd if=/tmp/hdr.blk of="$dev" bs=4096 count=1 oflag=direct conv=fsync 2>/dev/null
    [ "$(read_header)" = "$(cat /tmp/hdr)" ] || die "header read back differs: '$(read_header)'"
}
field() {   # $1 = key; prints its value from $hdr
    for kv in $hdr; do
        case "$kv" in "$1="*) echo "${kv#*=}"; return 0 ;; esac
    done
}

hdr=$(read_header || true)
boot=1 sum=""
case "$hdr" in
    "$MAGIC "*)
        if [ "$(field run)" = "$run" ]; then
            prev=$(field boot)
            case "$prev" in ''|*[!0-9]*) die "corrupt header: '$hdr'" ;; esac
            boot=$((prev + 1))
            sum=$(field sha256)
        else
            say "header of another run on the disk (ignored): $hdr"
        fi ;;
    *) say "no header of this test on the disk: first boot" ;;
esac
say "run $run, boot $boot"

if [ "$boot" -ge 3 ]; then
    die "boot $boot: the guest rebooted more than once (header: $hdr)"
fi

if [ "$boot" -eq 1 ]; then
    head -c $((PAT_MIB_LEN * 1048576)) /dev/urandom > /tmp/pattern
    sum=$(sha256sum /tmp/pattern | cut -d' ' -f1)
    say "writing $PAT_MIB_LEN MiB of random data at $PAT_MIB_OFF MiB, sha256 $sum"
    dd if=/tmp/pattern of="$dev" bs=1048576 seek=$PAT_MIB_OFF oflag=direct conv=fsync 2>/dev/null
    rm -f /tmp/pattern
    # Header last: it only claims a checksum once the data it describes is written.
    write_header 1 "$sum"
    sync
    blockdev --flushbufs "$dev"
    say "boot 1 done; rebooting the guest (reboot -f; needs run-guest.sh --allow-reboot)"
    reboot -f
    sleep 30
    die "reboot -f did not reboot the guest"
fi

# Boot 2. Record it first: if anything below reboots the guest again, boot 3 fails.
write_header 2 "$sum"

hwq=$(ls -d /sys/block/"$name"/mq/*/ | wc -l)
say "$name has $hwq hw queue(s) after the reboot (expected $want)"
[ "$hwq" -eq "$want" ] || die "expected $want hw queues, got $hwq"

now=$(dd if="$dev" bs=1048576 skip=$PAT_MIB_OFF count=$PAT_MIB_LEN iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
say "pattern after the reboot: sha256 $now"
[ "$now" = "$sum" ] || die "data written before the reboot changed: sha256 $now, expected $sum"

# Per-queue interrupt counts, as in fio-verify.sh: every request queue must
# complete I/O after the reboot (each one was re-initialised by the target).
# Keyed by name and IRQ number: virtio-scsi names every request queue "virtioN-request".
queue_irqs() {
    awk '$NF ~ /^virtio[0-9]+-req/ { n = 0; for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+$/) n += $i; else break; print $NF "@" $1, n }' /proc/interrupts
}
before=$(queue_irqs)
pin=""
if [ "$(nproc)" -ge 2 ]; then pin="--cpus_allowed=0-1 --cpus_allowed_policy=split"; fi
say "fio: 4k random writes + crc32c verify, 2 jobs"
# Size-bound, not time_based: fio skips the verify phase when a runtime limit ends
# the write phase. 2 x 8 MiB of 4k writes + verify take ~2 s under TCG.
# shellcheck disable=SC2086
fio --name=reboot4k --filename="$dev" --direct=1 --ioengine=libaio --numjobs=2 \
    --group_reporting --eta=never --verify=crc32c --verify_fatal=1 --do_verify=1 \
    --end_fsync=1 $pin --rw=randwrite --bs=4k --iodepth=16 \
    --offset=256M --size=8M --offset_increment=64M
after=$(queue_irqs)
say "request-queue interrupts before fio: $(echo "$before" | tr '\n' ' ')"
say "request-queue interrupts after fio:  $(echo "$after" | tr '\n' ' ')"
if [ "$want" -gt 1 ] && [ "$(nproc)" -ge 2 ]; then
    nq=$(echo "$after" | grep -c . || true)
    [ "$nq" -ge "$want" ] || die "found $nq request-queue interrupt lines, expected $want"
    idle=$(echo "$before
$after" | awk '{ if ($1 in b) { if ($2 - b[$1] <= 0) print $1 } else b[$1] = $2 }')
    [ -z "$idle" ] || die "queue(s) without completions after the reboot: $idle"
fi
say "OK (boot 2 of 2)"
