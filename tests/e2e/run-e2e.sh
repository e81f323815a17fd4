#!/usr/bin/env bash
# End-to-end suite: real Linux guests (QEMU, TCG) doing I/O through a vhost-user-blk
# target.
#
# Usage:
#   tests/e2e/run-e2e.sh [--target blktarget|qsd] [--backend SPEC] [--kind blk|scsi]
#                        [--queues N] [--only NAME[,NAME...]] [--guest-timeout SECS]
#                        [--log-dir DIR] [--install-deps] [--packed] [--verbose]
#
#   --target         blktarget (default): $BLKTARGET_CMD serve --socket SOCK --backend SPEC --queues N
#                    qsd: qemu-storage-daemon exporting a 1 GiB file in /dev/shm (reference
#                    target, validates the harness itself)
#   --backend        blktarget backend spec (default ram:1G); ignored for qsd. "rbd" alone: the run starts a
#                    throwaway Ceph cluster (tests/ceph/start-cluster.sh --bluestore), serves an image on it
#                    (rbd:rbd/e2e,conf=...) and stops exactly that cluster at exit (rbd-e2e.sh)
#   --kind           blk (default) or scsi (vhost-user-scsi-pci; blktarget only; adds
#                    "--kind scsi" to the serve command line)
#   --queues         device queues (default 2)
#   --only           run only these tests (comma separated)
#   --guest-timeout  limit per guest boot in seconds (default 240)
#   --log-dir        where console and target logs go (default: a new /tmp/blktarget-e2e-logs.* dir)
#   --install-deps   run install-deps.sh first
#   --packed         guests use packed virtqueues (packed=on on the -device)
#   --verbose        stream guest consoles while they run
#
# Environment:
#   BLKTARGET_CMD         command that starts the target (default:
#                         dotnet <repo>/src/BlkTarget/bin/Release/net10.0/blktarget.dll)
#   BLKTARGET_EXTRA_ARGS  extra arguments appended to "serve ..." (word-split)
#   BLKTARGET_E2E_CACHE   guest cache dir (see build-guest.sh)
#   E2E_TARGET_START_TIMEOUT  seconds to wait for the socket to appear (default 30)
#
# Tests, in order, all against ONE target process:
#   target-start               the target comes up and creates its socket
#   fio-verify                 guest 1: fio random writes + crc32c verify on both queues
#   ext4-write                 guest 2: mkfs.ext4, write + checksum a file, fsck, remount
#   ext4-verify-after-reboot   guest 3 (fresh VM, same target): fsck + checksum still good
#   guest-reboot               guest 4 reboots once inside ONE QEMU process (same
#                              vhost-user connection, device stopped and restarted):
#                              data written before the reboot + fio verify after it
#   scsi-luns                  (--kind scsi only) a second target started from a config
#                              file with three LUNs on two targets: all appear as disks
#                              with the right sizes/serials/identifiers, fio verify on two
#                              at once, ext4, UNMAP, MODE SELECT, a read-only LUN
#   scsi-pr                    (--kind scsi only) persistent reservations with sg_persist on
#                              /dev/sda: register, reserve, read keys/reservation/full status,
#                              report capabilities, conflicts, release, unregister
#   scsi-commands              (--kind scsi only) sg3_utils on /dev/sda: WRITE SAME(10/16) with a
#                              pattern and with UNMAP, REPORT SUPPORTED OPERATION CODES usage data,
#                              START STOP UNIT (NOT READY until START), VPD 86h and 83h
#   disk-resize                (blktarget, --kind blk, ram backend runs only) a target managed over
#                              RPC: disk + export created with the CLI, the disk grown while the
#                              guest runs; the guest sees the new size without a rescan
#   qos-limit                  (same runs) export limited to 500 IOPS with `blktarget qos set` before
#                              the guest boots; fio 4k randread in the guest measures 500 +- 10%
#   fio-during-attach          (same runs) the first VM runs fio verify while a second disk and
#     + second-vm-attach       export are created over RPC and a second VM writes ext4 on them
#   scsi-hotplug               (blktarget, --kind scsi, ram backend runs only) a LUN hot-added and
#                              hot-removed over RPC; the guest sees /dev/sdb come and go by itself
#   scsi-pr-two-initiators     (same runs) two VMs at once on two exports of one shared disk made over
#     + scsi-pr-second-initiator  RPC: A reserves Write Exclusive; B's write conflicts, its read works,
#                              it PREEMPTs A (A: REGISTRATIONS PREEMPTED, its writes conflict), CLEARs;
#                              then both race COMPARE AND WRITE increments of one block, none lost
#   target-restart             (blktarget, --kind blk, ram backend runs only) its own target on a file;
#                              a guest with reconnect=1 runs fio verify passes while the target is
#                              killed -9 and restarted three times, then stopped with SIGTERM and
#                              restarted once; then ext4 + e2fsck. 0 I/O errors required.
#   rbd-osd-fault              (--backend rbd only) fio verify passes while the cluster's OSD is killed,
#                              kept down a few seconds and restarted: no error, every verify passes
#   target-shutdown            SIGTERM: the target exits 0 and removes its socket
# Output: one "e2e PASS <name>" / "e2e FAIL <name>" line per test, then exactly one
# "e2e: N passed, M failed" line. Exit status is non-zero if anything failed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SUITE_START=$SECONDS

target=blktarget backend=ram:1G backend_set=0 kind=blk queues=2 only="" guest_timeout=240
log_dir="" install=0 verbose=0 packed=0
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d'; }   # the header above
while [[ $# -gt 0 ]]; do
    case "$1" in
        --target) target=$2; shift 2 ;;
        --backend) backend=$2; backend_set=1; shift 2 ;;
        --kind) kind=$2; shift 2 ;;
        --queues) queues=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        --guest-timeout) guest_timeout=$2; shift 2 ;;
        --log-dir) log_dir=$2; shift 2 ;;
        --install-deps) install=1; shift ;;
        --packed) packed=1; shift ;;
        --verbose) verbose=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run-e2e: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
case "$target" in blktarget|qsd) ;; *) echo "run-e2e: --target must be blktarget or qsd" >&2; exit 2 ;; esac
case "$kind" in blk|scsi) ;; *) echo "run-e2e: --kind must be blk or scsi" >&2; exit 2 ;; esac
[[ "$queues" =~ ^[1-9][0-9]*$ ]] || { echo "run-e2e: --queues must be a positive integer" >&2; exit 2; }
if [[ "$target" == qsd && "$kind" == scsi ]]; then
    # qemu-storage-daemon only has a vhost-user-blk export.
    echo "run-e2e: --kind scsi is not supported with --target qsd" >&2
    exit 2
fi

ALL_TESTS=(fio-verify ext4-write ext4-verify-after-reboot guest-reboot)
[[ "$kind" != scsi ]] || ALL_TESTS+=(scsi-luns scsi-pr scsi-commands)
# Runtime management (disks and exports made over RPC while the target serves): BlkTarget only.
[[ "$target" != blktarget || "$kind" != blk || "$backend" != ram:* ]] || ALL_TESTS+=(disk-resize qos-limit fio-during-attach migration memory-hotplug)
[[ "$target" != blktarget || "$kind" != scsi || "$backend" != ram:* ]] || ALL_TESTS+=(scsi-hotplug scsi-pr-two-initiators)
# Restarts need a backend that outlives the process (it brings its own file); once per suite, in the ram run.
if [[ "$target" == blktarget && "$kind" == blk && "$backend" == ram:* ]]; then ALL_TESTS+=(target-restart); fi
# --backend rbd: a cluster of the run's own (started below, after the prerequisites; stopped in cleanup).
. "$HERE/rbd-e2e.sh"
[[ "$target" != blktarget || "$backend" != rbd ]] || ALL_TESTS+=(rbd-osd-fault)
TESTS=()
if [[ -n "$only" ]]; then
    IFS=, read -ra TESTS <<< "$only"
    for t in "${TESTS[@]}"; do
        [[ -f "$HERE/jobs/$t.sh" ]] || { echo "run-e2e: unknown test '$t' (have: ${ALL_TESTS[*]})" >&2; exit 2; }
    done
else
    TESTS=("${ALL_TESTS[@]}")
fi

info() { echo "[e2e] $*"; }
passed=0 failed=0
declare -A RESULT
pass() { RESULT[$1]=pass; passed=$((passed + 1)); echo "e2e PASS $1"; }
fail() {
    RESULT[$1]=fail; failed=$((failed + 1))
    [[ -z "${2:-}" ]] || info "$1: $2"
    echo "e2e FAIL $1"
}
summary_done=0
summary() {
    summary_done=1
    info "logs: $log_dir"
    info "total wall time: $((SECONDS - SUITE_START))s"
    echo "e2e: $passed passed, $failed failed"
}

if [[ -z "$log_dir" ]]; then
    log_dir=$(mktemp -d "${TMPDIR:-/tmp}/blktarget-e2e-logs.XXXXXX")
fi
mkdir -p "$log_dir"

# A missing prerequisite is a failure, never a skip: a suite that did not run must not look like one that passed.
prereq_missing() {
    fail prerequisites "$1"
    summary
    exit 1
}

# --- state for cleanup ----------------------------------------------------------
WORK="" target_pid="" guest_pid="" qsd_image="" restart_pid="" restart_dir=""
MIG_PIDS=()
# shellcheck disable=SC2317  # only reached through the EXIT trap
cleanup() {
    local rc=$?
    if [[ $rc -eq 130 || $rc -eq 143 ]] && [[ $summary_done -eq 0 ]]; then
        # Interrupted (CI cancel, Ctrl-C): still leave a verdict in the log.
        fail interrupted "received a signal, stopping"
        summary
    fi
    # Kill what we started, by pid only. The guest's run-guest.sh has its own trap
    # that stops its QEMU.
    if [[ -n "$guest_pid" ]] && kill -0 "$guest_pid" 2>/dev/null; then
        kill -TERM "$guest_pid" 2>/dev/null || true
        wait "$guest_pid" 2>/dev/null || true
    fi
    if [[ -n "$target_pid" ]] && kill -0 "$target_pid" 2>/dev/null; then
        kill -TERM "$target_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$target_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$target_pid" 2>/dev/null || true
        wait "$target_pid" 2>/dev/null || true
    fi
    for pid in "${MIG_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    if [[ -n "$restart_pid" ]] && kill -0 "$restart_pid" 2>/dev/null; then
        kill -KILL "$restart_pid" 2>/dev/null || true
        wait "$restart_pid" 2>/dev/null || true
    fi
    [[ -z "$qsd_image" ]] || rm -f "$qsd_image"
    [[ -z "$restart_dir" ]] || rm -rf "$restart_dir"
    [[ -z "$WORK" ]] || rm -rf "$WORK"
    rbd_cluster_stop    # after the target: it holds a connection to the cluster
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

info "target=$target kind=$kind queues=$queues$([[ $target == blktarget ]] && echo " backend=$backend") tests: ${TESTS[*]}"
info "logs: $log_dir"

# --- prerequisites ----------------------------------------------------------------
if [[ $install -eq 1 ]]; then
    "$HERE/install-deps.sh" || prereq_missing "install-deps.sh failed"
fi
for c in qemu-system-x86_64 timeout cpio; do
    command -v "$c" >/dev/null 2>&1 || prereq_missing "'$c' not found (run tests/e2e/install-deps.sh)"
done

TARGET_CMD=()
if [[ "$target" == qsd ]]; then
    command -v qemu-storage-daemon >/dev/null 2>&1 || prereq_missing "qemu-storage-daemon not found (run tests/e2e/install-deps.sh)"
    [[ $backend_set -eq 0 ]] || info "note: --backend is ignored with --target qsd"
else
    if [[ -n "${BLKTARGET_CMD:-}" ]]; then
        read -ra TARGET_CMD <<< "$BLKTARGET_CMD"
        command -v "${TARGET_CMD[0]}" >/dev/null 2>&1 || prereq_missing "BLKTARGET_CMD: '${TARGET_CMD[0]}' not found"
    else
        dll="$REPO/src/BlkTarget/bin/Release/net10.0/blktarget.dll"
        command -v dotnet >/dev/null 2>&1 || prereq_missing "dotnet not found"
        [[ -f "$dll" ]] || prereq_missing "$dll not built (dotnet build -c Release src/BlkTarget)"
        TARGET_CMD=(dotnet "$dll")
    fi
fi

if [[ "$target" == blktarget && "$backend" == rbd ]]; then
    rbd_cluster_start || prereq_missing "the throwaway Ceph cluster for --backend rbd did not start (see $log_dir/ceph-cluster.log)"
fi

# First build takes ~20 s (kernel download + initramfs); afterwards it is a cache hit.
if ! guest_dir=$("$HERE/build-guest.sh" 2> "$log_dir/build-guest.log"); then
    tail -n 20 "$log_dir/build-guest.log" | sed 's/^/[e2e]   /'
    prereq_missing "could not build the guest kernel/initramfs (see $log_dir/build-guest.log)"
fi
info "guest: $guest_dir"

# Short path: unix socket paths are limited to 107 bytes.
WORK=$(mktemp -d /tmp/blktarget-e2e.XXXXXX)
SOCK="$WORK/vhost.sock"
TARGET_LOG="$log_dir/target.log"

target_tail() {
    info "----- last 40 lines of the target log ($TARGET_LOG) -----"
    tail -n 40 "$TARGET_LOG" 2>/dev/null | sed 's/^/[target] /' || true
}

# --- target lifecycle -------------------------------------------------------------
start_target() {
    if [[ "$target" == qsd ]]; then
        # tmpfs does not support O_DIRECT, hence cache.direct=off.
        qsd_image=$(mktemp /dev/shm/blktarget-e2e.XXXXXX.img)
        truncate -s 1G "$qsd_image"
        local cmd=(qemu-storage-daemon
            --blockdev "driver=file,node-name=f0,filename=$qsd_image,cache.direct=off"
            --export "type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path=$SOCK,writable=on,num-queues=$queues")
    else
        local extra=()
        [[ "$kind" == blk ]] || extra+=(--kind "$kind")
        if [[ -n "${BLKTARGET_EXTRA_ARGS:-}" ]]; then
            local more=()
            read -ra more <<< "$BLKTARGET_EXTRA_ARGS"
            extra+=("${more[@]}")
        fi
        local cmd=("${TARGET_CMD[@]}" serve --socket "$SOCK" --backend "$backend" --queues "$queues" ${extra[@]+"${extra[@]}"})
    fi
    echo "+ ${cmd[*]}" > "$TARGET_LOG"
    info "starting target: ${cmd[*]}"
    "${cmd[@]}" </dev/null >>"$TARGET_LOG" 2>&1 &
    target_pid=$!

    # Ready = the socket file exists. A target should bind+listen before anything
    # else can observe the path, so QEMU can connect as soon as it is there.
    local limit=${E2E_TARGET_START_TIMEOUT:-30} t0=$SECONDS
    while [[ ! -S "$SOCK" ]]; do
        if ! kill -0 "$target_pid" 2>/dev/null; then
            local rc=0
            wait "$target_pid" || rc=$?
            target_pid=""
            target_tail
            fail target-start "target exited with status $rc before creating $SOCK"
            return 1
        fi
        if (( SECONDS - t0 >= limit )); then
            target_tail
            fail target-start "socket $SOCK did not appear within ${limit}s"
            return 1
        fi
        sleep 0.1
    done
    info "target up (pid $target_pid) after $((SECONDS - t0))s"
    pass target-start
}

target_alive() { [[ -n "$target_pid" ]] && kill -0 "$target_pid" 2>/dev/null; }

stop_target() {
    if ! target_alive; then
        local rc=0
        [[ -z "$target_pid" ]] || wait "$target_pid" || rc=$?
        target_pid=""
        target_tail
        fail target-shutdown "target was no longer running at shutdown (exit status $rc)"
        return
    fi
    kill -TERM "$target_pid"
    local t0=$SECONDS
    while kill -0 "$target_pid" 2>/dev/null && (( SECONDS - t0 < 20 )); do sleep 0.1; done
    if kill -0 "$target_pid" 2>/dev/null; then
        kill -KILL "$target_pid" 2>/dev/null || true
        wait "$target_pid" 2>/dev/null || true
        target_pid=""
        target_tail
        fail target-shutdown "target did not exit within 20s of SIGTERM (killed)"
        return
    fi
    local rc=0
    wait "$target_pid" || rc=$?
    target_pid=""
    if [[ $rc -ne 0 ]]; then
        target_tail
        fail target-shutdown "target exited with status $rc after SIGTERM (expected 0)"
    elif [[ -e "$SOCK" ]]; then
        target_tail
        fail target-shutdown "target exited but left its socket $SOCK behind"
    else
        info "target stopped cleanly after $((SECONDS - t0))s"
        pass target-shutdown
    fi
}

# --- one guest test -----------------------------------------------------------------
run_test() {
    local name=$1 dep=${2:-}
    if [[ -n "$dep" && "${RESULT[$dep]:-}" != pass ]]; then
        fail "$name" "needs a passing $dep in the same run (got: ${RESULT[$dep]:-not run})"
        return
    fi
    if ! target_alive; then
        fail "$name" "target is not running"
        return
    fi
    info "running $name ..."
    local t0=$SECONDS args=(--socket "${TEST_SOCK:-$SOCK}" --job "$HERE/jobs/$name.sh" --queues "$queues" --kind "$kind"
        --timeout "$guest_timeout" --guest-dir "$guest_dir" --log "$log_dir/$name.console.log")
    [[ $verbose -eq 0 ]] || args+=(--verbose)
    # More run-guest.sh arguments for this test (word-split), e.g. --env for a job two guests run.
    local more=()
    read -ra more <<< "${TEST_ARGS:-}"
    args+=("${more[@]}")
    [[ $packed -eq 0 ]] || args+=(--packed)
    # guest-reboot: the guest resets itself once; exactly two boots of /init.
    [[ "$name" != guest-reboot ]] || args+=(--allow-reboot --expect-boots 2)
    # Run the guest in the background and poll: an INT/TERM trap can then stop it
    # right away, and if the target dies the guest's I/O would hang until the guest
    # timeout (minutes), so stop the guest a few seconds after the target is gone.
    local rc=0 dead_since=""
    "$HERE/run-guest.sh" "${args[@]}" > "$log_dir/$name.run.log" 2>&1 &
    guest_pid=$!
    while kill -0 "$guest_pid" 2>/dev/null; do
        if ! target_alive; then
            dead_since=${dead_since:-$SECONDS}
            if (( SECONDS - dead_since >= 5 )); then
                info "$name: target died, stopping the guest"
                kill -TERM "$guest_pid" 2>/dev/null || true
                break
            fi
        fi
        sleep 0.5
    done
    wait "$guest_pid" || rc=$?
    guest_pid=""
    if [[ $verbose -eq 1 ]]; then cat "$log_dir/$name.run.log"; fi
    if [[ $rc -eq 0 ]] && target_alive; then
        info "$name passed in $((SECONDS - t0))s"
        pass "$name"
        return
    fi
    [[ $verbose -eq 1 ]] || sed 's/^/[guest] /' "$log_dir/$name.run.log"
    target_tail
    if [[ $rc -eq 0 ]]; then
        fail "$name" "guest passed but the target died during the test"
    elif ! target_alive; then
        fail "$name" "the target died during the test; guest stopped after $((SECONDS - t0))s (console: $log_dir/$name.console.log)"
    else
        fail "$name" "guest failed after $((SECONDS - t0))s (console: $log_dir/$name.console.log)"
    fi
}

# --- scsi-luns: its own target, several LUNs from a config file ------------------------
run_scsi_luns() {
    local sock="$WORK/luns.sock" log="$log_dir/target-luns.log" config="$WORK/luns.json" pid rc=0
    cat > "$config" <<JSON
{
  "devices": [
    {
      "name": "e2e-luns", "kind": "scsi", "socket": "$sock", "queues": $queues,
      "targets": [
        { "target": 0, "luns": [
          { "lun": 0, "backend": "ram:256M", "serial": "E2E-LUN0" },
          { "lun": 1, "backend": "ram:512M", "blockSize": 4096, "serial": "E2E-LUN1" } ] },
        { "target": 1, "luns": [ { "lun": 0, "backend": "ram:64M", "readOnly": true } ] }
      ]
    }
  ]
}
JSON
    echo "+ ${TARGET_CMD[*]} serve --config $config" > "$log"
    "${TARGET_CMD[@]}" serve --config "$config" </dev/null >>"$log" 2>&1 &
    pid=$!
    local t0=$SECONDS
    while [[ ! -S "$sock" ]] && kill -0 "$pid" 2>/dev/null && (( SECONDS - t0 < 30 )); do sleep 0.1; done
    if [[ ! -S "$sock" ]]; then
        kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
        tail -n 20 "$log" | sed 's/^/[target-luns] /'
        fail scsi-luns "the multi-LUN target did not come up"
        return
    fi
    TEST_SOCK=$sock run_test scsi-luns
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" || rc=$?
    if [[ $rc -ne 0 ]]; then
        tail -n 20 "$log" | sed 's/^/[target-luns] /'
        info "scsi-luns: the multi-LUN target exited with status $rc"
    fi
}

# --- runtime management: a target with no device, everything created over its RPC socket ----
# Starts it (MGMT_PID, MGMT_RPC); returns non-zero when it did not come up.
start_management_target() {
    local log="$log_dir/target-mgmt.log"
    MGMT_RPC="$WORK/mgmt-rpc.sock"
    echo "+ ${TARGET_CMD[*]} serve --rpc-socket $MGMT_RPC" > "$log"
    "${TARGET_CMD[@]}" serve --rpc-socket "$MGMT_RPC" </dev/null >>"$log" 2>&1 &
    MGMT_PID=$!
    local t0=$SECONDS
    while [[ ! -S "$MGMT_RPC" ]] && kill -0 "$MGMT_PID" 2>/dev/null && (( SECONDS - t0 < 30 )); do sleep 0.1; done
    [[ -S "$MGMT_RPC" ]] && return 0
    tail -n 20 "$log" | sed 's/^/[target-mgmt] /'
    return 1
}

mgmt() { "${TARGET_CMD[@]}" "$@" --rpc-socket "$MGMT_RPC" 2>&1 | tee -a "$log_dir/target-mgmt.cli.log" | sed 's/^/[rpc] /'; return "${PIPESTATUS[0]}"; }

stop_management_target() {
    local rc=0
    kill -TERM "$MGMT_PID" 2>/dev/null || true
    wait "$MGMT_PID" || rc=$?
    [[ $rc -eq 0 ]] || { tail -n 20 "$log_dir/target-mgmt.log" | sed 's/^/[target-mgmt] /'; info "the management target exited with status $rc"; }
}

# disk-resize: the disk grows by RPC while the guest runs; the guest sees the new size by itself.
run_disk_resize() {
    local sock="$WORK/resize.sock" console="$log_dir/disk-resize.console.log"
    if ! start_management_target; then fail disk-resize "the management target did not come up"; return; fi
    if ! mgmt disk create --name d1 --backend ram:256M || ! mgmt export create-blk --name vm1 --socket "$sock" --disk d1 --queues "$queues"; then
        fail disk-resize "creating the disk and export over RPC failed"
        stop_management_target
        return
    fi
    rm -f "$console"
    # Resize once the guest says it is ready.
    ( await_console "$console" E2E-RESIZE-READY && mgmt disk resize d1 384M ) &
    run_guest_with "$sock" disk-resize $!
    mgmt disk list || true
    stop_management_target
}

# qos-limit: the export is limited to 500 IOPS over RPC before the guest boots; fio in the guest must measure it.
run_qos_limit() {
    local sock="$WORK/qos.sock"
    if ! start_management_target; then fail qos-limit "the management target did not come up"; return; fi
    if ! mgmt disk create --name q1 --backend ram:256M || ! mgmt export create-blk --name vm-q --socket "$sock" --disk q1 --queues "$queues" \
        || ! mgmt qos set vm-q --iops-total 500; then
        fail qos-limit "creating the disk and the limited export over RPC failed"
        stop_management_target
        return
    fi
    TEST_SOCK=$sock run_test qos-limit
    grep -a "E2E-QOS-IOPS" "$log_dir/qos-limit.console.log" | tr -d '\r' | sed 's/^/[guest] /' || true
    mgmt export list || true
    mgmt stats vm-q || true
    stop_management_target
}

# Waits until the guest's console (written as it runs) shows MARKER; fails after the guest timeout.
await_console() {
    local console=$1 marker=$2 t0=$SECONDS
    until grep -aq "$marker" "$console" 2>/dev/null; do
        (( SECONDS - t0 < guest_timeout )) || return 1
        sleep 0.5
    done
}

# Runs guest test NAME against SOCK while the host-side steps in background job WATCHER follow its console.
run_guest_with() {
    local sock=$1 name=$2 watcher=$3
    TEST_SOCK=$sock run_test "$name"
    kill "$watcher" 2>/dev/null || true
    wait "$watcher" 2>/dev/null || true
}

# scsi-hotplug: a LUN is added and removed over RPC while the guest runs; the guest follows without a rescan.
run_scsi_hotplug() {
    local sock="$WORK/hotplug.sock" console="$log_dir/scsi-hotplug.console.log"
    if ! start_management_target; then fail scsi-hotplug "the management target did not come up"; return; fi
    if ! mgmt disk create --name h0 --backend ram:64M || ! mgmt disk create --name h1 --backend ram:128M \
        || ! mgmt export create-scsi --name vm2 --socket "$sock" --lun 0:0=h0 --queues "$queues"; then
        fail scsi-hotplug "creating the disks and export over RPC failed"
        stop_management_target
        return
    fi
    rm -f "$console"
    (
        await_console "$console" E2E-HOTPLUG-ADD && mgmt lun add --export vm2 --lun 0:1 --disk h1 \
            && await_console "$console" E2E-HOTPLUG-REMOVE && mgmt lun remove --export vm2 --lun 0:1
    ) &
    run_guest_with "$sock" scsi-hotplug $!
    mgmt export list || true
    stop_management_target
}

# A guest besides the one run_test runs (call it in a background job): LOG (second-vm) names its files in the log
# directory and its exit status in $WORK/LOG.rc; JOB is a jobs/ script; the rest goes to run-guest.sh.
run_second_guest() {
    local log=$1 sock=$2 job=$3 rc=0
    shift 3
    "$HERE/run-guest.sh" --socket "$sock" --job "$HERE/jobs/$job.sh" --timeout "$guest_timeout" --guest-dir "$guest_dir" \
        --log "$log_dir/$log.console.log" "$@" > "$log_dir/$log.run.log" 2>&1 || rc=$?
    echo "$rc" > "$WORK/$log.rc"
}

# The verdict NAME of the guest run_second_guest ran as LOG; WHY says what failed.
second_guest_verdict() {
    local log=$1 name=$2 why=$3
    if [[ "$(cat "$WORK/$log.rc" 2>/dev/null)" == 0 ]]; then
        pass "$name"
    else
        sed "s/^/[$log] /" "$log_dir/$log.run.log" 2>/dev/null | tail -n 30 || true
        fail "$name" "$why (console: $log_dir/$log.console.log)"
    fi
}

# fio-during-attach: while a first VM runs fio verify on one export, a second disk and export are created over RPC
# and a second VM boots on them and writes ext4 (verdict second-vm-attach); the first VM must see no error.
run_fio_during_attach() {
    local sock_a="$WORK/vm-a.sock" sock_b="$WORK/vm-b.sock" console="$log_dir/fio-during-attach.console.log"
    if ! start_management_target; then fail fio-during-attach "the management target did not come up"; return; fi
    if ! mgmt disk create --name a1 --backend ram:256M || ! mgmt export create-blk --name vm-a --socket "$sock_a" --disk a1 --queues "$queues"; then
        fail fio-during-attach "creating the first disk and export over RPC failed"
        stop_management_target
        return
    fi
    rm -f "$console" "$WORK/second-vm.rc"
    (
        await_console "$console" E2E-FIO-RUNNING || exit 1
        info "first VM runs fio: creating disk b1 and export vm-b over RPC, booting the second VM"
        mgmt disk create --name b1 --backend ram:256M && mgmt export create-blk --name vm-b --socket "$sock_b" --disk b1 || exit 1
        run_second_guest second-vm "$sock_b" ext4-write --kind blk
        info "second VM finished (exit $(cat "$WORK/second-vm.rc")) while the first one was $(grep -ac 'fio-during-attach: pass' "$console") fio passes in"
    ) &
    local watcher=$!
    TEST_SOCK=$sock_a run_test fio-during-attach
    wait "$watcher" 2>/dev/null || true
    second_guest_verdict second-vm second-vm-attach \
        "the second VM on a disk and export created while the first ran fio did not pass"
    mgmt export list || true
    stop_management_target
}

# --- migration: live migration between two QEMU processes on two exports of one shared disk --------

# Sends each QMP command in "$@" to the monitor on unix socket $1 (after qmp_capabilities); prints the replies.
qmp() {
    local sock=$1; shift
    { echo '{"execute":"qmp_capabilities"}'; printf '%s\n' "$@"; sleep 0.3; } | socat -t2 - "UNIX-CONNECT:$sock" 2>/dev/null
}

# Migrates the VM whose monitor is $1 to $2 (a unix: URI) and waits until QEMU says completed (0) or failed (1).
migrate_vm() {
    local from=$1 uri=$2 t0=$SECONDS out
    # Unthrottled, and a downtime a TCG guest that keeps writing can meet.
    qmp "$from" '{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":10737418240,"downtime-limit":2000}}' >/dev/null
    qmp "$from" "{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"$uri\"}}" | grep -q '"error"' && return 1
    while (( SECONDS - t0 < 120 )); do
        out=$(qmp "$from" '{"execute":"query-migrate"}')
        if grep -Eq '"status": ?"completed"' <<< "$out"; then
            info "migration: $uri completed in $((SECONDS - t0))s ($(grep -oE '"total-time": ?[0-9]+' <<< "$out" | grep -oE '[0-9]+$') ms, downtime $(grep -oE '"downtime": ?[0-9]+' <<< "$out" | grep -oE '[0-9]+$') ms)"
            return 0
        fi
        if grep -Eq '"status": ?"(failed|cancelled)"' <<< "$out"; then info "migration: $uri failed: $out"; return 1; fi
        sleep 1
    done
    info "migration: $uri did not complete within 120 s"
    return 1
}

# Starts a guest QEMU for the migration test in the background (run-guest.sh arguments in "$@"); pid in MIG_PIDS.
start_migration_guest() {
    local run_log=$1; shift
    "$HERE/run-guest.sh" --job "$HERE/jobs/migration.sh" --queues "$queues" --kind blk --timeout "$guest_timeout" \
        --guest-dir "$guest_dir" --mem 512M "$@" > "$run_log" 2>&1 &
    MIG_PIDS+=($!)
}

# Moves the VM whose monitor is $1 to a new QEMU on export socket $2 (monitor $3, migration socket $4, console $5, run
# log $6): starts that one with -incoming, migrates, quits the old one. On failure sets the caller's `why`.
move_vm() {
    local from=$1 sock=$2 to=$3 mig=$4
    start_migration_guest "$6" --socket "$sock" --qmp "$to" --incoming "unix:$mig" --log "$5"
    if ! await_socket "$mig" || ! await_socket "$to"; then why="the destination QEMU on $(basename "$sock") did not come up"; return 0; fi
    if ! migrate_vm "$from" "unix:$mig"; then why="migration to $(basename "$sock") failed"; return 0; fi
    qmp "$from" '{"execute":"quit"}' >/dev/null || true
}

await_socket() { local t0=$SECONDS; until [[ -S "$1" ]]; do (( SECONDS - t0 < 30 )) || return 1; sleep 0.2; done; }

# Source VM on export A; once its fio runs, a destination QEMU on export B (-incoming) takes it over, then a third QEMU
# on export A takes it back while fio keeps verifying. The last QEMU's job result is the verdict.
run_migration() {
    local name=migration t0=$SECONDS why="" rc=0
    local sock_a="$WORK/mig-a.sock" sock_b="$WORK/mig-b.sock"
    local c1="$log_dir/migration.console.log" c2="$log_dir/migration-dest.console.log" c3="$log_dir/migration-back.console.log"
    local q1="$WORK/qmp-src.sock" q2="$WORK/qmp-dest.sock" q3="$WORK/qmp-back.sock" m1="$WORK/mig-to-b.sock" m2="$WORK/mig-to-a.sock"
    if ! start_management_target; then fail "$name" "the management target did not come up"; return; fi
    if ! mgmt disk create --name m1 --backend ram:512M --shared || ! mgmt export create-blk --name mig-a --socket "$sock_a" --disk m1 --queues "$queues" \
        || ! mgmt export create-blk --name mig-b --socket "$sock_b" --disk m1 --queues "$queues"; then
        fail "$name" "creating the shared disk and its two exports over RPC failed"
        stop_management_target
        return
    fi
    info "running $name ..."
    rm -f "$c1" "$c2" "$c3"
    MIG_PIDS=()
    start_migration_guest "$log_dir/migration.run.log" --socket "$sock_a" --qmp "$q1" --log "$c1"
    if ! await_console "$c1" E2E-MIGRATE-READY; then why="the source guest never got ready"; fi
    if [[ -z "$why" ]]; then
        sleep 3   # fio is writing
        move_vm "$q1" "$sock_b" "$q2" "$m1" "$c2" "$log_dir/migration-dest.run.log"
    fi
    # The guest runs on B now: wait until fio finished a pass there, then take it back to A.
    if [[ -z "$why" ]] && ! await_console "$c2" "migration: fio pass"; then why="no fio pass completed on the destination"; fi
    [[ -n "$why" ]] || move_vm "$q2" "$sock_a" "$q3" "$m2" "$c3" "$log_dir/migration-back.run.log"
    if [[ -z "$why" ]]; then
        wait "${MIG_PIDS[2]}" || rc=$?
        if [[ $rc -ne 0 ]]; then why="the guest failed after migrating back (console: $c3)"; fi
    fi
    if [[ -z "$why" ]] && grep -aq "E2E-MIGRATION-IO-DONE" "$c1" "$c2"; then why="the guest's I/O window ended before it came back to A"; fi
    for pid in "${MIG_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    MIG_PIDS=()
    tr -d '\r' < "$c2" 2>/dev/null | grep -a "migration: fio pass" | sed 's/^/[guest on B] /' || true
    tr -d '\r' < "$c3" 2>/dev/null | grep -aE "migration: |E2E-MIGRATION-IO-DONE|E2E-RESULT" | sed 's/^/[guest back on A] /' || true
    grep -ac "dirty log of" "$log_dir/target-mgmt.log" | sed 's/^/[target] dirty logs mapped: /' || true
    stop_management_target
    if [[ -z "$why" ]]; then
        info "$name passed in $((SECONDS - t0))s"
        pass "$name"
        return
    fi
    for f in migration.run.log migration-dest.run.log migration-back.run.log; do sed "s/^/[$f] /" "$log_dir/$f" 2>/dev/null | tail -n 30; done
    tail -n 40 "$log_dir/target-mgmt.log" | sed 's/^/[target-mgmt] /'
    fail "$name" "$why after $((SECONDS - t0))s"
}

# --- memory-hotplug: a pc-dimm added and removed over QMP while the guest does I/O with buffers in it ------------
run_memory_hotplug() {
    local name=memory-hotplug console="$log_dir/memory-hotplug.console.log" q="$WORK/qmp-memhp.sock"
    local lines_before
    lines_before=$(wc -l < "$log_dir/target.log")
    rm -f "$console"
    (
        await_console "$console" E2E-MEMHP-ADD || exit 1
        qmp "$q" '{"execute":"object-add","arguments":{"qom-type":"memory-backend-memfd","id":"hp1","size":268435456,"share":true}}' \
            '{"execute":"device_add","arguments":{"driver":"pc-dimm","id":"dimm1","memdev":"hp1","node":1}}' | grep -a '"error"' && exit 1
        info "$name: pc-dimm dimm1 (256 MiB memfd, node 1) added over QMP"
        await_console "$console" E2E-MEMHP-REMOVE || exit 1
        qmp "$q" '{"execute":"device_del","arguments":{"id":"dimm1"}}' | grep -a '"error"' && exit 1
        info "$name: device_del dimm1 sent"
    ) &
    TEST_ARGS="--qmp $q --maxmem 1G --mem 512M" run_guest_with "$SOCK" "$name" $!
    tr -d '\r' < "$console" 2>/dev/null | grep -a "memory-hotplug: " | sed 's/^/[guest] /' || true
    tail -n +"$((lines_before + 1))" "$log_dir/target.log" | grep -E "memory region (added|removed)" | sed 's/^/[target] /' || true
}

# scsi-pr-two-initiators: two VMs at once on two SCSI exports of one shared disk (two I_T nexuses of one logical
# unit) run jobs/scsi-pr-two-initiators.sh as initiator A (this verdict) and B (verdict scsi-pr-second-initiator):
# reservation, conflicts, PREEMPT and CLEAR with their unit attentions, and a COMPARE AND WRITE race between them.
run_scsi_pr_two_initiators() {
    local name=scsi-pr-two-initiators second=scsi-pr-second-initiator sock_a="$WORK/pr-a.sock" sock_b="$WORK/pr-b.sock"
    if ! start_management_target; then fail "$name" "the management target did not come up"; fail "$second"; return; fi
    if ! mgmt disk create --name shared --backend ram:256M --shared \
        || ! mgmt export create-scsi --name pr-a --socket "$sock_a" --lun 0:0=shared --queues "$queues" \
        || ! mgmt export create-scsi --name pr-b --socket "$sock_b" --lun 0:0=shared --queues "$queues"; then
        fail "$name" "creating the shared disk and its two exports over RPC failed"
        fail "$second"
        stop_management_target
        return
    fi
    rm -f "$WORK/$second.rc"
    run_second_guest "$second" "$sock_b" "$name" --kind scsi --queues "$queues" --env E2E_PR_ROLE=b &
    local guest_b=$!
    TEST_SOCK=$sock_a TEST_ARGS="--env E2E_PR_ROLE=a" run_test "$name"
    wait "$guest_b" 2>/dev/null || true
    local c
    for c in "$log_dir/$name.console.log" "$log_dir/$second.console.log"; do
        tr -d '\r' < "$c" 2>/dev/null | grep -aE '^scsi-pr-[ab]: (FAIL|all checks|the counter|[0-9]+ COMPARE)' | sed 's/^/[guest] /' || true
    done
    second_guest_verdict "$second" "$second" "initiator B (the second VM on the shared disk) did not pass"
    stop_management_target
}

# --- target-restart: its own target on a file, restarted under a running guest -------------
RESTART_SOCK="" RESTART_LOG=""
# Starts the restart target (extra serve arguments in "$@") and waits until it listens; its pid in restart_pid.
start_restart_target() {
    echo "+ ${TARGET_CMD[*]} serve --socket $RESTART_SOCK --backend file:$restart_dir/restart.img --queues $queues $*" >> "$RESTART_LOG"
    "${TARGET_CMD[@]}" serve --socket "$RESTART_SOCK" --backend "file:$restart_dir/restart.img" --queues "$queues" "$@" \
        </dev/null >>"$RESTART_LOG" 2>&1 &
    restart_pid=$!
    local t0=$SECONDS
    while [[ ! -S "$RESTART_SOCK" ]] && kill -0 "$restart_pid" 2>/dev/null && (( SECONDS - t0 < 30 )); do sleep 0.05; done
    [[ -S "$RESTART_SOCK" ]]
}

run_target_restart() {
    local name=target-restart console="$log_dir/target-restart.console.log" t0=$SECONDS rc=0 round why=""
    RESTART_SOCK="$WORK/restart.sock" RESTART_LOG="$log_dir/target-restart.target.log"
    # O_DIRECT (the default cache=none) needs a disk filesystem, which /tmp may not be; the device's latency keeps
    # requests in flight long enough for the kills to catch some.
    restart_dir=$(mktemp -d /var/tmp/blktarget-e2e-restart.XXXXXX)
    : > "$RESTART_LOG"
    if ! start_restart_target --create 512M; then
        tail -n 20 "$RESTART_LOG" | sed 's/^/[target-restart] /'
        fail "$name" "the restart target did not come up"
        return
    fi
    info "running $name ..."
    local args=(--socket "$RESTART_SOCK" --job "$HERE/jobs/$name.sh" --queues "$queues" --kind blk --reconnect
        --timeout "$guest_timeout" --guest-dir "$guest_dir" --log "$console")
    [[ $verbose -eq 0 ]] || args+=(--verbose)
    "$HERE/run-guest.sh" "${args[@]}" > "$log_dir/$name.run.log" 2>&1 &
    guest_pid=$!
    while ! grep -q "E2E-RESTART-IO-START" "$console" 2>/dev/null; do
        if ! kill -0 "$guest_pid" 2>/dev/null; then why="the guest ended before its I/O started"; break; fi
        sleep 0.2
    done
    # Three kill -9 and one SIGTERM, 2 s of guest I/O before each; each new process opens the same file.
    for round in 1 2 3 4; do
        [[ -z "$why" ]] || break
        sleep 2
        if grep -q "E2E-RESTART-IO-DONE" "$console"; then why="the guest's I/O window ended before restart $round"; break; fi
        if (( round <= 3 )); then
            kill -KILL "$restart_pid"; wait "$restart_pid" 2>/dev/null || true
            rm -f "$RESTART_SOCK"    # left behind by the killed process; its absence is how we see the next one listen
            info "$name: target killed with SIGKILL ($round of 3)"
        else
            kill -TERM "$restart_pid"
            local trc=0
            wait "$restart_pid" || trc=$?
            if [[ $trc -ne 0 || -e "$RESTART_SOCK" ]]; then why="SIGTERM: the target exited with $trc$([[ -e $RESTART_SOCK ]] && echo ', socket left behind')"; break; fi
            info "$name: target stopped with SIGTERM (drained, exit 0)"
        fi
        if ! start_restart_target; then why="the target did not come back up after restart $round"; break; fi
    done
    if [[ -z "$why" ]] && grep -q "E2E-RESTART-IO-DONE" "$console"; then why="the guest's I/O window ended before the last restart finished"; fi
    if [[ -n "$why" ]]; then kill -TERM "$guest_pid" 2>/dev/null || true; fi
    wait "$guest_pid" || rc=$?
    guest_pid=""
    local resubmitted
    resubmitted=$( (grep -o "resubmitting [0-9]* in-flight" "$RESTART_LOG" || true) | awk '{n += $2} END {print n + 0}')
    grep -E "E2E-RESTART-IO-DONE|target-restart: fio pass .*after|target-restart: ext4" "$console" | tr -d '\r' | sed 's/^/[guest] /' || true
    info "$name: requests the restarted targets resubmitted from the inflight area: $resubmitted"
    kill -TERM "$restart_pid" 2>/dev/null || true
    wait "$restart_pid" 2>/dev/null || true
    restart_pid=""
    rm -rf "$restart_dir"
    restart_dir=""
    if [[ -z "$why" && $rc -eq 0 ]]; then
        info "$name passed in $((SECONDS - t0))s"
        pass "$name"
        return
    fi
    sed 's/^/[guest] /' "$log_dir/$name.run.log"
    tail -n 40 "$RESTART_LOG" | sed 's/^/[target-restart] /'
    fail "$name" "${why:-guest failed after $((SECONDS - t0))s} (console: $console)"
}

# --- main ---------------------------------------------------------------------------
if start_target; then
    for t in "${TESTS[@]}"; do
        case "$t" in
            # Only meaningful after ext4-write left a filesystem on this target's disk.
            ext4-verify-after-reboot)
                if [[ " ${TESTS[*]} " == *" ext4-write "* ]]; then run_test "$t" ext4-write; else run_test "$t"; fi ;;
            scsi-luns) run_scsi_luns ;;
            disk-resize) run_disk_resize ;;
            qos-limit) run_qos_limit ;;
            fio-during-attach) run_fio_during_attach ;;
            migration) run_migration ;;
            memory-hotplug) run_memory_hotplug ;;
            scsi-hotplug) run_scsi_hotplug ;;
            scsi-pr-two-initiators) run_scsi_pr_two_initiators ;;
            target-restart) run_target_restart ;;
            rbd-osd-fault) run_rbd_osd_fault ;;
            *) run_test "$t" ;;
        esac
    done
    stop_target
else
    for t in "${TESTS[@]}"; do fail "$t" "target did not start"; done
fi

summary
if [[ $failed -ne 0 ]]; then exit 1; fi
exit 0
