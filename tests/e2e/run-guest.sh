#!/usr/bin/env bash
# Boots one throw-away QEMU guest (TCG) against a vhost-user socket and runs one job
# script inside it.
#
# Usage:
#   run-guest.sh --socket SOCK --job JOBFILE [--queues N] [--kind blk|scsi]
#                [--timeout SECS] [--mem SIZE] [--smp N] [--log FILE]
#                [--guest-dir DIR] [--allow-reboot] [--expect-boots N] [--reconnect] [--packed]
#                [--env NAME=VALUE]... [--qmp SOCK] [--incoming URI] [--maxmem SIZE] [--verbose]
#
#   --socket     vhost-user unix socket served by the target (must already exist)
#   --job        guest-side shell script (busybox sh), becomes /job.sh in the guest
#   --queues     num-queues / num_queues of the device (default 1); the job sees it as
#                $E2E_QUEUES
#   --kind       blk: vhost-user-blk-pci, disk is /dev/vda (default)
#                scsi: vhost-user-scsi-pci, disk is /dev/sda
#   --timeout    hard limit for the whole guest run in seconds (default 240)
#   --mem        guest RAM, shared with the target via memfd (default 1G)
#   --smp        guest vCPUs (default 2)
#   --log        where to save the serial console (default: a temp file, path printed)
#   --guest-dir  kernel/initramfs dir from build-guest.sh (default: run build-guest.sh)
#   --allow-reboot  drop -no-reboot: a guest `reboot -f` resets the VM inside the same
#                QEMU process (same vhost-user connection; kernel + initramfs boot
#                again and the job runs again). poweroff still ends QEMU; --timeout
#                still bounds the whole run, all boots together.
#   --expect-boots N  fail unless the guest's /init started exactly N times
#                (counts its "E2E: guest up" lines; default: not checked)
#   --reconnect  add reconnect=1 to the vhost-user chardev: QEMU waits for a target that went away
#                and reconnects (with its inflight area) when one listens again
#   --env NAME=VALUE  export NAME=VALUE to the job (repeatable; VALUE of letters, digits and _.:/-), e.g. the
#                role of a job that two guests run at once
#   --packed     add packed=on to the -device: the guest driver uses packed virtqueues
#                (VIRTIO_F_RING_PACKED) if the target offers them
#   --qmp SOCK   QMP monitor on a unix socket (server, nowait), for tests that drive QEMU (migration)
#   --maxmem SIZE   room for memory hot-plug: -m MEM,slots=2,maxmem=SIZE and a memoryless NUMA node 1
#   --incoming URI  start as a live-migration destination (-incoming URI): the guest arrives from
#                another QEMU instead of booting; its console continues in this --log
#   --verbose    also stream the console to stdout while the guest runs
#
# Environment: E2E_QEMU_ARGS  extra QEMU arguments (word-split), for debugging, e.g.
#   E2E_QEMU_ARGS="-D /tmp/vu.trace -trace vhost_user_read -trace vhost_user_write"
#   logs every vhost-user message QEMU sends/receives (request numbers).
#
#   E2E_APPEND replaces "quiet" on the kernel command line, e.g. E2E_APPEND=loglevel=7.
#
# The job also gets E2E_RUN_ID: random, new for every run of this script, the same
# on every boot of one QEMU process (jobs use it to recognise their own reboot).
#
# Exit status: 0 only if the guest printed "E2E-RESULT: rc=0" (the last such line
# counts) and no kernel panic appears on the console. Otherwise non-zero, after
# printing the reason and the tail of the console log to stderr.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { echo "run-guest: $*" >&2; }
die() { log "ERROR: $*"; exit 2; }

socket="" job="" queues=1 kind=blk timeout_s=240 mem=1G smp=2 logfile="" guest_dir="" verbose=0
allow_reboot=0 expect_boots="" reconnect=0 packed=0 job_env=() qmp="" incoming="" maxmem=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --socket) socket=$2; shift 2 ;;
        --job) job=$2; shift 2 ;;
        --queues) queues=$2; shift 2 ;;
        --kind) kind=$2; shift 2 ;;
        --timeout) timeout_s=$2; shift 2 ;;
        --mem) mem=$2; shift 2 ;;
        --smp) smp=$2; shift 2 ;;
        --log) logfile=$2; shift 2 ;;
        --guest-dir) guest_dir=$2; shift 2 ;;
        --allow-reboot) allow_reboot=1; shift ;;
        --reconnect) reconnect=1; shift ;;
        --qmp) qmp=$2; shift 2 ;;
        --incoming) incoming=$2; shift 2 ;;
        --maxmem) maxmem=$2; shift 2 ;;
        --packed) packed=1; shift ;;
        --expect-boots) expect_boots=$2; shift 2 ;;
        --env) job_env+=("$2"); shift 2 ;;
        --verbose) verbose=1; shift ;;
        -h|--help) sed -n '2,45p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
done
[[ -n "$socket" ]] || die "--socket is required"
[[ -n "$job" && -f "$job" ]] || die "--job must name an existing file (got '$job')"
[[ -S "$socket" ]] || die "socket $socket does not exist (is the target running?)"
[[ "$queues" =~ ^[1-9][0-9]*$ ]] || die "--queues must be a positive integer"
for e in "${job_env[@]}"; do [[ "$e" =~ ^[A-Za-z_][A-Za-z0-9_]*=[A-Za-z0-9_.:/-]*$ ]] || die "--env wants NAME=VALUE (got '$e')"; done
[[ -z "$expect_boots" || "$expect_boots" =~ ^[1-9][0-9]*$ ]] || die "--expect-boots must be a positive integer"
case "$kind" in
    blk) device="vhost-user-blk-pci,chardev=c0,num-queues=$queues" ;;
    scsi) device="vhost-user-scsi-pci,chardev=c0,num_queues=$queues" ;;
    *) die "--kind must be blk or scsi" ;;
esac
[[ $packed -eq 0 ]] || device+=",packed=on"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found; run tests/e2e/install-deps.sh"

if [[ -z "$guest_dir" ]]; then
    guest_dir=$("$HERE/build-guest.sh") || die "building the guest failed"
fi
[[ -f "$guest_dir/kernel" && -f "$guest_dir/initramfs-base.cpio" ]] || die "no guest in $guest_dir"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/blktarget-guest.XXXXXX")
qemu_pid=""
# shellcheck disable=SC2317  # only reached through the EXIT trap
cleanup() {
    # Never leave a QEMU behind (e.g. when the caller is interrupted).
    if [[ -n "$qemu_pid" ]] && kill -0 "$qemu_pid" 2>/dev/null; then
        kill "$qemu_pid" 2>/dev/null || true
        wait "$qemu_pid" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -z "$logfile" ]]; then
    logfile=$(mktemp "${TMPDIR:-/tmp}/blktarget-guest-console.XXXXXX")
    log "console log: $logfile"
fi
mkdir -p "$(dirname "$logfile")"

# Per-test initramfs: a tiny cpio with /job.sh and /job.env, appended to the cached
# base. The kernel unpacks concatenated archives in order, so no rebuild is needed.
mkdir -p "$TMP/job"
cp "$job" "$TMP/job/job.sh"
cp "$HERE/job-lib.sh" "$TMP/job/job-lib.sh"
chmod 755 "$TMP/job/job.sh"
{
    echo "E2E_KIND=$kind"
    echo "E2E_QUEUES=$queues"
    echo "E2E_JOB_NAME=$(basename "$job" .sh)"
    echo "export E2E_RUN_ID=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
    for e in "${job_env[@]}"; do echo "export $e"; done
} > "$TMP/job/job.env"
(cd "$TMP/job" && printf '%s\n' job.sh job-lib.sh job.env | cpio -o -H newc -R 0:0 --quiet) > "$TMP/job.cpio"
cat "$guest_dir/initramfs-base.cpio" "$TMP/job.cpio" > "$TMP/initrd"

# Why these flags (see /work/shared/TESTING-WITH-QEMU.md):
#  - TCG, not KVM: the machines' paravirtual KVM cannot boot a stock kernel.
#  - memfd + share=on: vhost-user backends mmap guest RAM through the fds QEMU sends.
#  - -nodefaults/-display none/-serial stdio: only our disk, console on stdout.
#  - -no-reboot + panic=-1: a kernel panic ends QEMU instead of looping. With
#    --allow-reboot a panic resets the VM instead; the console check below still
#    fails the run, and a reboot loop ends at --timeout.
#  - quiet still shows kernel errors (I/O errors, virtio complaints) on the console.
# shellcheck disable=SC2054  # the commas are QEMU option syntax
qemu=(qemu-system-x86_64
    -accel tcg,thread=multi -cpu max -smp "$smp" -m "$mem${maxmem:+,slots=2,maxmem=$maxmem}"
    -object "memory-backend-memfd,id=mem,size=$mem,share=on" -numa node,memdev=mem
    -kernel "$guest_dir/kernel" -initrd "$TMP/initrd"
    -append "console=ttyS0 ${E2E_APPEND:-quiet} panic=-1 rdinit=/init"
    -chardev "socket,id=c0,path=$socket$([[ $reconnect -eq 0 ]] || echo ",reconnect=1")" -device "$device"
    -nodefaults -display none -serial stdio
)
[[ $allow_reboot -eq 1 ]] || qemu+=(-no-reboot)
[[ -z "$qmp" ]] || qemu+=(-qmp "unix:$qmp,server=on,wait=off")
[[ -z "$incoming" ]] || qemu+=(-incoming "$incoming")
# Memory hot-plug: a memoryless NUMA node 1 for the DIMMs, so the guest can bind I/O buffers to the new memory.
[[ -z "$maxmem" ]] || qemu+=(-numa node,nodeid=1)
if [[ -n "${E2E_QEMU_ARGS:-}" ]]; then
    read -ra more <<< "$E2E_QEMU_ARGS"
    qemu+=("${more[@]}")
fi
echo "run-guest: ${qemu[*]}" > "$logfile"

start=$SECONDS
# timeout: a wedged target or guest must fail the test, not hang CI. --kill-after in
# case QEMU ignores SIGTERM while stuck in a vhost-user call.
set +e
timeout --kill-after=10 "$timeout_s" "${qemu[@]}" </dev/null >>"$logfile" 2>&1 &
qemu_pid=$!
if [[ $verbose -eq 1 ]]; then
    # Follow the log rather than tee: keeps $! (and so the exit status) QEMU's.
    tail -n +1 -f --pid="$qemu_pid" "$logfile" &
fi
wait "$qemu_pid"
qemu_rc=$?
set -e
qemu_pid=""
wait 2>/dev/null   # let the --verbose tail print the last lines
elapsed=$((SECONDS - start))

# The console uses CRLF; take the last marker in case the job echoed something similar.
marker=$(tr -d '\r' < "$logfile" | grep -aoE 'E2E-RESULT: rc=[0-9]+' | tail -n1 || true)
rc=${marker##*rc=}
boots=$(tr -d '\r' < "$logfile" | grep -ac '^E2E: guest up' || true)

fail() {
    log "FAILED ($1) after ${elapsed}s; console log: $logfile"
    log "----- last 60 console lines -----"
    tr -d '\r' < "$logfile" | tail -n 60 >&2
    log "---------------------------------"
    exit 1
}

if tr -d '\r' < "$logfile" | grep -aq 'Kernel panic'; then
    fail "kernel panic on the console (guest booted $boots time(s))"
fi
if [[ -z "$marker" ]]; then
    if [[ $qemu_rc -eq 124 || $qemu_rc -eq 137 ]]; then
        fail "timeout after ${timeout_s}s, no result marker (guest booted $boots time(s))"
    fi
    fail "no result marker, qemu exit status $qemu_rc (guest booted $boots time(s))"
fi
if [[ "$rc" != 0 ]]; then
    fail "job exit status $rc"
fi
if [[ -n "$expect_boots" && "$boots" != "$expect_boots" ]]; then
    fail "the guest booted $boots time(s), expected $expect_boots"
fi
log "job $(basename "$job") passed in ${elapsed}s ($boots boot(s))"
exit 0
