#!/usr/bin/env bash
# Side-by-side host-side comparison: BlkTarget vs qemu-storage-daemon on the same kind of backing store,
# driven by the same load generator (`blktarget bench`, a vhost-user-blk frontend with memfd guest memory).
#
# Usage:
#   bench/compare.sh [--quick] [--rounds N] [--runtime S] [--ramp S] [--cases ram,file,null]
#                    [--queues "1 2"] [--pin] [--out FILE] [--no-build] [--keep-raw DIR]
#
#   --quick     1 round, 2 s per job after a 0.5 s ramp, RAM case only (about 1.5 minutes)
#   --rounds    rounds of the whole matrix (default 3); each round runs every job against both targets,
#               alternating which one goes first, and the table quotes the median over rounds
#   --runtime   measured seconds per job (default 3), after --ramp seconds of warm-up (default 1)
#   --cases     ram:  qsd on a file in /dev/shm (cache.direct=off) vs blktarget --backend ram:1G
#               file: both on one 1 GiB file in /var/tmp, O_DIRECT (qsd cache.direct=on,aio=io_uring;
#                     blktarget --backend file:PATH, O_DIRECT through its io_uring)
#               null: qsd driver=null-co (no data moved: pure protocol overhead) vs blktarget ram:1G
#               image: thin images of 2 GiB on /var/tmp, O_DIRECT: qsd qcow2 (qemu-img create, 64 KiB clusters,
#                     aio=io_uring, cache.direct=on) vs blktarget image: (--create, 64 KiB clusters); allocating
#                     (first) writes are measured on never-written ranges, one per round, before the fill
#               rbd:  a throwaway Ceph cluster (tests/ceph/start-cluster.sh, memstore: the software path, not a
#                     disk) with one 256 MiB image per target: qsd driver=rbd (cache.direct=on, so librbd's cache
#                     is off as in ours) vs blktarget rbd:rbd/IMG,conf=...; the cluster is stopped after the case
#               (default: ram,file)
#   --queues    queue counts to run the matrix with (default "1 2")
#   --pin       load generator on CPU 0, both targets on CPU 1 (qsd under taskset; blktarget --cpus 1:
#               one pinned reactor for all queues, like qsd's single thread). Default: unpinned.
#   --out       the markdown report (default bench/results/YYYY-MM-DD-compare[-quick].md)
#   --baseline REV  also run blktarget as built from git revision REV (e.g. the commit before a change) in the
#               ram case, as a third target in the same rotation: the report adds ours/baseline ratios and
#               IOPS per target CPU-second, so "faster than before" is measured in one interleaved run
#   --keep-raw  keep every job's JSON in DIR
#   --report-only DIR  only write the report from the JSON a --keep-raw run left in DIR (give the same
#               --rounds/--runtime/--ramp/--pin so the header says what was run)
#
# The matrix: 4k randread and randwrite at QD1 and QD32, 128k sequential read and write QD8, a 257.5k random
# read/write of 515 small segments (as Windows guests send) at QD4, for each
# queue count. Requires qemu-storage-daemon (Debian: qemu-system-common), python3, the .NET SDK.
# A full run (3 rounds, ram+file) takes about 12-14 minutes; --quick about 2.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
log() { echo "compare: $*" >&2; }
die() { log "ERROR: $*"; exit 2; }

rounds=3 runtime=3 ramp=1 cases=ram,file queue_counts="1 2" pin=0 out="" build=1 keep_raw="" quick=0 report_only="" baseline=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) quick=1; rounds=1; runtime=2; ramp=0.5; cases=ram; shift ;;
        --rounds) rounds=$2; shift 2 ;;
        --runtime) runtime=$2; shift 2 ;;
        --ramp) ramp=$2; shift 2 ;;
        --cases) cases=$2; shift 2 ;;
        --queues) queue_counts=$2; shift 2 ;;
        --pin) pin=1; shift ;;
        --out) out=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        --keep-raw) keep_raw=$2; shift 2 ;;
        --baseline) baseline=$2; shift 2 ;;
        --report-only) report_only=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;   # the whole header comment
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
command -v qemu-storage-daemon >/dev/null || die "qemu-storage-daemon not found (apt-get install qemu-system-common)"
command -v python3 >/dev/null || die "python3 not found (apt-get install python3)"
command -v dotnet >/dev/null || die "the .NET SDK (dotnet) is required"

# Our own build output, apart from the tree's bin/obj, so a concurrent build elsewhere cannot change the
# binary under a running comparison.
BUILD_DIR=${BLKTARGET_BENCH_BUILD:-${TMPDIR:-/tmp}/blktarget-bench-build}
if [[ $build -eq 1 && -z "$report_only" ]]; then
    log "building blktarget (Release) into $BUILD_DIR"
    dotnet build "$REPO/src/BlkTarget" -c Release --artifacts-path "$BUILD_DIR" -nologo -v quiet >"${TMPDIR:-/tmp}/blktarget-bench-build.log" 2>&1 \
        || { grep -E "error" "${TMPDIR:-/tmp}/blktarget-bench-build.log" | sort -u | head -20 >&2; die "build failed"; }
fi
DLL="$BUILD_DIR/bin/BlkTarget/release/blktarget.dll"
[[ -f "$DLL" || -n "$report_only" ]] || die "no build at $DLL (drop --no-build)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/blktarget-compare.XXXXXX")
RAW=${keep_raw:-$WORK/raw}
mkdir -p "$RAW"

# The baseline build: the tree at REV, built apart (its own artifacts), run as a third target in the ram case.
BASE_DLL="" BASELINE_LABEL=""
if [[ -n "$baseline" && -z "$report_only" ]]; then
    BASELINE_LABEL=$(git -C "$REPO" rev-parse --short "$baseline" 2>/dev/null) || die "--baseline: '$baseline' is not a git revision"
    mkdir -p "$WORK/base-src"
    git -C "$REPO" archive "$baseline" | tar -x -C "$WORK/base-src" || die "--baseline: cannot extract $baseline"
    log "building the baseline blktarget ($BASELINE_LABEL) into $BUILD_DIR-base"
    dotnet build "$WORK/base-src/src/BlkTarget" -c Release --artifacts-path "$BUILD_DIR-base" -nologo -v quiet >"$WORK/base-build.log" 2>&1 \
        || { grep -E "error" "$WORK/base-build.log" | sort -u | head -20 >&2; die "baseline build failed"; }
    BASE_DLL="$BUILD_DIR-base/bin/BlkTarget/release/blktarget.dll"
fi
pids=()
WARM_PID=""
cleanup() {
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${pids[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    rm -f /dev/shm/blktarget-compare-"$$".img
    rm -f /var/tmp/blktarget-compare-"$$".img /var/tmp/blktarget-compare-"$$".qcow2 /var/tmp/blktarget-compare-"$$".bti
    [[ -z "${CEPH_DIR:-}" ]] || "$REPO/tests/ceph/stop-cluster.sh" --remove "$CEPH_DIR"
    rm -rf "$WORK"
    [[ -n "${hugepages_before:-}" ]] && echo "$hugepages_before" > /proc/sys/vm/nr_hugepages 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# RAM cases drive both targets from hugetlb "guest RAM", as a VM with memory-backend-memfd,hugetlb=on would:
# reserve 64 huge pages (128 MiB) for the load generator while the script runs (root), give them back at exit.
hugepages_before="" ram_bench_args=()
if [[ -w /proc/sys/vm/nr_hugepages ]]; then
    hugepages_before=$(cat /proc/sys/vm/nr_hugepages)
    echo $(( hugepages_before + 64 )) > /proc/sys/vm/nr_hugepages
    free=$(awk '/HugePages_Free/ {print $2}' /proc/meminfo)
    if (( free >= 64 )); then ram_bench_args=(--hugepages); else echo "compare: only $free huge pages free; RAM jobs use 4 KiB guest pages" >&2; fi
else
    echo "compare: /proc/sys/vm/nr_hugepages is not writable (not root?): RAM jobs use 4 KiB guest pages" >&2
fi
if (( ${#ram_bench_args[@]} > 0 )); then ram_guest_memory="hugetlb, 2 MiB pages (--hugepages)"; else ram_guest_memory="4 KiB pages (no huge pages could be reserved)"; fi

bench_pin=() target_pin=() ours_cpus=()
if [[ $pin -eq 1 ]]; then
    bench_pin=(taskset -c 0)
    target_pin=(taskset -c 1)
    ours_cpus=(--cpus 1)
fi

SIZE=1G
SIZE_BYTES=$((1 << 30))
# Thin images get room for one never-written range per round for the allocating jobs, then the fill.
IMAGE_SIZE=2G
# rbd case: each target's image (thin; filled once), and the cluster it lives on (started and stopped per case).
RBD_SIZE=256M CEPH_DIR=""
max_queues=0
for q in $queue_counts; do (( q > max_queues )) && max_queues=$q; done

wait_socket() {
    local sock=$1 pid=$2
    for _ in $(seq 1 300); do
        [[ -S "$sock" ]] && return 0
        kill -0 "$pid" 2>/dev/null || die "target for $sock exited early (log: $WORK)"
        sleep 0.1
    done
    die "socket $sock did not appear"
}

# start_qsd CASE -> sets QSD_PID, QSD_SOCK
start_qsd() {
    local case=$1 blockdev
    QSD_SOCK="$WORK/qsd-$case.sock"
    case $case in
        ram) blockdev="driver=file,node-name=f0,filename=/dev/shm/blktarget-compare-$$.img,cache.direct=off" ;;
        file) blockdev="driver=file,node-name=f0,filename=/var/tmp/blktarget-compare-$$.img,cache.direct=on,aio=io_uring" ;;
        null) blockdev="driver=null-co,node-name=f0,size=$SIZE_BYTES" ;;
        rbd) blockdev="driver=rbd,node-name=f0,pool=rbd,image=cmp-qsd,conf=$CEPH_DIR/ceph.conf,cache.direct=on" ;;
        image) qemu-img create -q -f qcow2 /var/tmp/blktarget-compare-$$.qcow2 "$IMAGE_SIZE"
               blockdev="driver=qcow2,node-name=f0,file.driver=file,file.filename=/var/tmp/blktarget-compare-$$.qcow2,file.cache.direct=on,file.aio=io_uring" ;;
    esac
    "${target_pin[@]}" qemu-storage-daemon --blockdev "$blockdev" \
        --export "type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path=$QSD_SOCK,writable=on,num-queues=$max_queues" \
        >"$WORK/qsd-$case.log" 2>&1 &
    QSD_PID=$!
    pids+=("$QSD_PID")
    wait_socket "$QSD_SOCK" "$QSD_PID"
}

# start_blktarget NAME DLL CASE -> sets STARTED_PID, STARTED_SOCK (NAME: ours or base)
start_blktarget() {
    local name=$1 dll=$2 case=$3 backend create=()
    STARTED_SOCK="$WORK/$name-$case.sock"
    case $case in
        ram|null) backend="ram:$SIZE" ;;
        file) backend="file:/var/tmp/blktarget-compare-$$.img" ;;
        image) backend="image:/var/tmp/blktarget-compare-$$.bti" create=(--create "$IMAGE_SIZE") ;;
        rbd) backend="rbd:rbd/cmp-ours,conf=$CEPH_DIR/ceph.conf" ;;
    esac
    # Not under taskset: the reactors are pinned by --cpus (which checks the CPU against the process's affinity).
    dotnet "$dll" serve --socket "$STARTED_SOCK" --backend "$backend" "${create[@]}" --queues "$max_queues" "${ours_cpus[@]}" \
        --log-level warning >"$WORK/$name-$case.log" 2>&1 &
    STARTED_PID=$!
    pids+=("$STARTED_PID")
    wait_socket "$STARTED_SOCK" "$STARTED_PID"
}

start_ours() { start_blktarget ours "$DLL" "$1"; OURS_PID=$STARTED_PID OURS_SOCK=$STARTED_SOCK; }
start_base() { start_blktarget base "$BASE_DLL" "$1"; BASE_PID=$STARTED_PID BASE_SOCK=$STARTED_SOCK; }

# target_of NAME -> sets sock, pid
target_of() {
    case $1 in
        qsd) sock=$QSD_SOCK pid=$QSD_PID ;;
        ours) sock=$OURS_SOCK pid=$OURS_PID ;;
        base) sock=$BASE_SOCK pid=$BASE_PID ;;
    esac
}

# restart_target NAME CASE: stops that target and starts it again (a fresh process on the same backing store)
restart_target() {
    case $1 in
        qsd) stop_pid "$QSD_PID"; start_qsd "$2" ;;
        ours) stop_pid "$OURS_PID"; start_ours "$2" ;;
        base) stop_pid "$BASE_PID"; start_base "$2" ;;
    esac
}

# rotation ROUND -> sets order: the case's targets, the first one moving on by one each round
rotation() {
    local n=${#targets[@]} i
    order=()
    for (( i = 0; i < n; i++ )); do order+=("${targets[$(( (i + $1 - 1) % n ))]}"); done
}

stop_pid() {
    local p=$1
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
}

bench() { "${bench_pin[@]}" dotnet "$DLL" bench "$@"; }

# The matrix: name | bench arguments.
JOBS=(
    "4k randread QD1|--rw randread --bs 4k --iodepth 1"
    "4k randread QD32|--rw randread --bs 4k --iodepth 32"
    "4k randwrite QD1|--rw randwrite --bs 4k --iodepth 1"
    "4k randwrite QD32|--rw randwrite --bs 4k --iodepth 32"
    "128k read QD8|--rw read --bs 128k --iodepth 8"
    "128k write QD8|--rw write --bs 128k --iodepth 8"
    "257.5k randrw 515 segs QD4|--rw randrw --bs 263680 --segments 515 --iodepth 4"
)
# Thin images only, before the fill: first writes into never-written space (every 4k write lands in a 64 KiB cluster
# of its own with high probability: 1024 writes over 256 MiB = 4096 clusters), round r in [r*384M, r*384M+384M).
ALLOC_JOBS=(
    "4k randwrite QD32 allocating|--rw randwrite --bs 4k --iodepth 32 --size 4M|0"
    "128k write QD8 allocating|--rw write --bs 128k --iodepth 8 --size 128M|256"
)
bench_cpus=()
[[ $pin -eq 1 ]] && bench_cpus=(--cpus 0)

if [[ -n "$report_only" ]]; then
    RAW=$report_only
    ram_guest_memory="n/a (report regenerated from saved results)"
    elapsed="n/a" load_before="n/a (report regenerated from saved results)" load_after="n/a"
else
started=$(date +%s)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for case in ${cases//,/ }; do
    case $case in ram|file|null|image|rbd) ;; *) die "unknown case '$case' (ram, file, null, image, rbd)" ;; esac
    log "case $case: starting targets"
    [[ $case == ram ]] && truncate -s "$SIZE" /dev/shm/blktarget-compare-$$.img
    if [[ $case == file ]]; then
        # Real blocks (not a sparse or fallocated file, whose reads would cost no disk I/O).
        dd if=/dev/zero of=/var/tmp/blktarget-compare-$$.img bs=1M count=1024 oflag=direct status=none
    fi
    if [[ $case == rbd ]]; then
        # One image per target: both stay open for the whole case, and two writers on one image would bounce its
        # exclusive lock. Small, because a memstore OSD keeps everything (several times over) in RAM.
        CEPH_DIR=$(mktemp -d /var/tmp/blktarget-compare-ceph.XXXXXX)
        "$REPO/tests/ceph/start-cluster.sh" "$CEPH_DIR" >"$WORK/ceph-start.log" 2>&1 || { cat "$WORK/ceph-start.log" >&2; die "the Ceph cluster did not start"; }
        for img in cmp-qsd cmp-ours; do CEPH_CONF=$CEPH_DIR/ceph.conf rbd create --size "$RBD_SIZE" "rbd/$img" || die "rbd create $img failed"; done
    fi
    targets=(qsd ours)
    start_qsd "$case"
    start_ours "$case"
    if [[ -n "$BASE_DLL" && $case == ram ]]; then
        start_base "$case"
        targets+=(base)
    fi
    # A load generator that is warm before it connects: its first second otherwise measures its own JIT (a fresh
    # .NET process), not the target's. It warms up on a qemu-storage-daemon null-co export nobody else uses.
    if [[ -z "$WARM_PID" ]]; then
        qemu-storage-daemon --blockdev driver=null-co,node-name=w0,size=$SIZE_BYTES \
            --export "type=vhost-user-blk,id=w0,node-name=w0,addr.type=unix,addr.path=$WORK/warm.sock,writable=on" \
            >"$WORK/warm.log" 2>&1 &
        WARM_PID=$!
        pids+=("$WARM_PID")
        wait_socket "$WORK/warm.sock" "$WARM_PID"
    fi
    # The first second after start, before any other I/O: what a user sees who starts the target and runs fio at
    # once (JIT warm-up). Random writes, so the figure does not depend on what the disk holds; the report sets it
    # against the same job's steady-state median. One second is one sample, as noisy as any (on the shared 2-core
    # machines one in three or four lands 15-25% low): each round starts every target afresh twice (their disks are
    # filled only afterwards), and the report takes the median of all.
    for fs in $(seq 1 $((2 * rounds))); do
        for t in "${targets[@]}"; do
            [[ $case == null && $t == qsd ]] && continue
            [[ $case == image ]] && continue   # its never-written space is kept for the allocating jobs below
            (( fs > 1 )) && restart_target "$t" "$case"
            target_of "$t"
            file="$RAW/$case--$t--q1--first_second--r$fs.json"
            bench --socket "$sock" --rw randwrite --bs 4k --iodepth 32 --runtime 1 --ramp 0 "${bench_cpus[@]}" \
                --warm-up-socket "$WORK/warm.sock" --warm-up 3 --json >"$file" 2>/dev/null || rm -f "$file"
        done
    done
    if [[ $case == image ]]; then
        for round in $(seq 1 "$rounds"); do
            rotation "$round"
            for job in "${ALLOC_JOBS[@]}"; do
                name=${job%%|*} rest=${job#*|}
                args=${rest%|*} at=$(( (round - 1) * 384 + ${rest##*|} ))
                for t in "${order[@]}"; do
                    target_of "$t"
                    file="$RAW/$case--$t--q1--${name// /_}--r$round.json"
                    # shellcheck disable=SC2086
                    bench --socket "$sock" $args --offset-range "${at}M:256M" --target-pid "$pid" "${bench_cpus[@]}" --json \
                        >"$file" 2>"$file.err" || { log "job failed: $case $t $name: $(cat "$file.err")"; rm -f "$file"; }
                done
            done
        done
        log "case image: allocating jobs done"
    fi
    # Fill both devices once so reads hit written data (not holes or the zero page); the file is shared.
    for t in "${targets[@]}"; do
        [[ $case == null && $t == qsd ]] && continue
        [[ $case == file ]] && continue   # dd wrote it already
        target_of "$t"
        fill=$SIZE
        [[ $case == image ]] && fill=$IMAGE_SIZE
        [[ $case == rbd ]] && fill=$RBD_SIZE
        bench --socket "$sock" --rw write --bs 1M --iodepth 4 --size "$fill" --json >"$WORK/fill-$case-$t.json" \
            || die "filling the $t device failed"
    done
    for round in $(seq 1 "$rounds"); do
        rotation "$round"
        for q in $queue_counts; do
            for job in "${JOBS[@]}"; do
                name=${job%%|*}
                args=${job#*|}
                for t in "${order[@]}"; do
                    target_of "$t"
                    file="$RAW/$case--$t--q$q--${name// /_}--r$round.json"
                    # shellcheck disable=SC2086  # args is a word list on purpose
                    extra=()
                    [[ $case == ram || $case == null ]] && extra=("${ram_bench_args[@]}")
                    if ! bench --socket "$sock" $args --queues "$q" --runtime "$runtime" --ramp "$ramp" \
                            --target-pid "$pid" "${bench_cpus[@]}" "${extra[@]}" --json >"$file" 2>"$file.err"; then
                        log "job failed: $case $t q=$q $name: $(cat "$file.err")"
                        rm -f "$file"
                    fi
                done
            done
            log "case $case round $round/$rounds queues=$q done ($(( $(date +%s) - started ))s)"
        done
    done
    stop_pid "$QSD_PID"
    stop_pid "$OURS_PID"
    [[ " ${targets[*]} " == *" base "* ]] && stop_pid "$BASE_PID"
    rm -f /dev/shm/blktarget-compare-$$.img /var/tmp/blktarget-compare-$$.img /var/tmp/blktarget-compare-$$.qcow2 /var/tmp/blktarget-compare-$$.bti
    if [[ -n "${CEPH_DIR:-}" ]]; then "$REPO/tests/ceph/stop-cluster.sh" --remove "$CEPH_DIR"; CEPH_DIR=""; fi
done
elapsed=$(( $(date +%s) - started ))
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
fi

if [[ -z "$out" ]]; then
    suffix=""
    if [[ $quick -eq 1 ]]; then suffix="-quick"; fi
    mkdir -p "$HERE/results"
    out="$HERE/results/$(date +%F)-compare$suffix.md"
fi
mkdir -p "$(dirname "$out")"

python3 - "$RAW" "$out" "$BASELINE_LABEL" <<PY
import json, os, sys, statistics, glob, subprocess
raw, out, baseline = sys.argv[1], sys.argv[2], sys.argv[3]
runs = {}
for path in glob.glob(os.path.join(raw, "*.json")):
    case, target, q, name, rnd = os.path.basename(path)[:-5].split("--")
    try:
        with open(path) as f: r = json.load(f)
    except Exception:
        continue
    runs.setdefault((case, q, name), {}).setdefault(target, []).append(r)

def med(values): return statistics.median(values) if values else None
def fmt_iops(v): return "-" if v is None else (f"{v/1e6:.2f}M" if v >= 1e6 else f"{v/1e3:.1f}k")
def fmt_us(v): return "-" if v is None else f"{v/1000:.1f}"
def fmt_mib(v): return "-" if v is None else f"{v/2**20:.0f}"
def fmt_cpu(v): return "-" if v is None else f"{v:.2f}"
def ratio(a, b): return "-" if not a or not b else f"{a/b:.2f}x"

case_names = {"ram": "RAM-backed (qsd: file in /dev/shm, cache.direct=off; ours: ram:1G)",
              "file": "File on /var/tmp, O_DIRECT (qsd: aio=io_uring, cache.direct=on; ours: file:, io_uring)",
              "null": "Protocol overhead (qsd: null-co, no data; ours: ram:1G)",
              "rbd": "Ceph RBD, throwaway 1-OSD memstore cluster on 127.0.0.1 (qsd: driver=rbd, cache.direct=on; ours: rbd:), one 256 MiB image per target",
              "image": "Thin images on /var/tmp, O_DIRECT (qsd: qcow2, aio=io_uring; ours: image:), 2 GiB, 64 KiB clusters; 'allocating' rows write never-written space, the others run after a full fill"}
job_order = ["4k_randwrite_QD32_allocating", "128k_write_QD8_allocating", "4k_randread_QD1", "4k_randread_QD32", "4k_randwrite_QD1", "4k_randwrite_QD32", "128k_read_QD8", "128k_write_QD8", "257.5k_randrw_515_segs_QD4"]
lines = []
def sh(cmd):
    try: return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except Exception: return "?"
lines.append(f"# BlkTarget vs qemu-storage-daemon, host-side load generator")
lines.append("")
lines.append(f"- date: {sh('date -u +%Y-%m-%dT%H:%MZ')}, commit {sh('git -C $REPO rev-parse --short HEAD')}{' (+ local changes)' if sh('git -C $REPO status --porcelain --untracked-files=no') else ''}")
cpu_model = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2")
mem_gib = sh("free -g | awk '/Mem:/{print \$2}'")
qsd_version = (sh("qemu-storage-daemon --version | head -1").split() + ["?", "?", "?"])[2]
lines.append(f"- machine: {sh('nproc')} cores ({cpu_model}), {mem_gib} GiB, kernel {sh('uname -r')}")
lines.append(f"- qemu-storage-daemon {qsd_version}, .NET {sh('dotnet --version')}")
lines.append(f"- rounds: $rounds, {float('$runtime'):g} s measured per job after {float('$ramp'):g} s ramp; targets alternate per job, the first one alternates per round; figures are medians over rounds")
lines.append(f"- pinning: {'load generator on CPU 0, targets on CPU 1 (blktarget --cpus 1)' if $pin else 'none (load generator threads and targets float over both cores)'}; blktarget default idle poll (200 us), load generator polls 100 us before sleeping")
lines.append(f"- guest memory of the RAM and null jobs: $ram_guest_memory")
lines.append(f"- conditions: load average $load_before before, $load_after after; {sh('uptime -p')}; total $elapsed s")
lines.append("")
lines.append("IOPS and mean latency (µs) are medians; 'ours/qsd' > 1 means BlkTarget is faster (for latency: < 1 is better). "
             "CPU = target CPU seconds per measured second (1.00 = one core busy).")
for case in ["ram", "null", "file", "image", "rbd"]:
    keys = [k for k in runs if k[0] == case]
    if not keys: continue
    lines.append("")
    lines.append(f"## {case_names[case]}")
    lines.append("")
    lines.append("| job | queues | qsd IOPS | ours IOPS | ours/qsd | qsd lat µs | ours lat µs | ours/qsd lat | qsd MiB/s | ours MiB/s | qsd CPU | ours CPU | qsd IOPS/CPU-s | ours IOPS/CPU-s | rounds |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    def stats(k, t):
        rs = runs[k].get(t, [])
        cpu = [r["cpu"]["target_s"] / r["cpu"]["window_s"] for r in rs if r["cpu"].get("target_s") is not None and r["cpu"]["window_s"] > 0]
        # IOPS per target CPU-second: per round (IOPS over that round's CPU share), then the median.
        eff = [r["all"]["iops"] / (r["cpu"]["target_s"] / r["cpu"]["window_s"]) for r in rs
               if r["cpu"].get("target_s") and r["cpu"]["window_s"] > 0]
        return dict(iops=med([r["all"]["iops"] for r in rs]), lat=med([r["all"]["lat_ns"]["mean"] for r in rs]),
                    bw=med([r["all"]["bw_bytes"] for r in rs]), cpu=med(cpu), eff=med(eff), n=len(rs))
    for q in sorted({k[1] for k in keys}):
        for name in job_order:
            k = (case, q, name)
            if k not in runs: continue
            a, b = stats(k, "qsd"), stats(k, "ours")
            lat_ratio = "-" if not a["lat"] or not b["lat"] else f"{b['lat']/a['lat']:.2f}"
            lines.append(f"| {name.replace('_', ' ')} | {q[1:]} | {fmt_iops(a['iops'])} | {fmt_iops(b['iops'])} | {ratio(b['iops'], a['iops'])} | "
                         f"{fmt_us(a['lat'])} | {fmt_us(b['lat'])} | {lat_ratio} | {fmt_mib(a['bw'])} | {fmt_mib(b['bw'])} | "
                         f"{fmt_cpu(a['cpu'])} | {fmt_cpu(b['cpu'])} | {fmt_iops(a['eff'])} | {fmt_iops(b['eff'])} | {a['n']}/{b['n']} |")
    if baseline and any("base" in runs[k] for k in keys):
        lines.append("")
        lines.append(f"Against the baseline build ({baseline}), same load generator, same rotation (ours/base > 1: this build is faster):")
        lines.append("")
        lines.append("| job | queues | base IOPS | ours IOPS | ours/base | base lat µs | ours lat µs | base IOPS/CPU-s | ours IOPS/CPU-s | ours/base per CPU-s | rounds |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for q in sorted({k[1] for k in keys}):
            for name in job_order:
                k = (case, q, name)
                if k not in runs or "base" not in runs[k]: continue
                a, b = stats(k, "base"), stats(k, "ours")
                lines.append(f"| {name.replace('_', ' ')} | {q[1:]} | {fmt_iops(a['iops'])} | {fmt_iops(b['iops'])} | {ratio(b['iops'], a['iops'])} | "
                             f"{fmt_us(a['lat'])} | {fmt_us(b['lat'])} | {fmt_iops(a['eff'])} | {fmt_iops(b['eff'])} | {ratio(b['eff'], a['eff'])} | {a['n']}/{b['n']} |")
    # The first second after start against the steady state of the same job (4k randwrite QD32, 1 queue).
    first = runs.get((case, "q1", "first_second"), {})
    if first:
        parts = []
        for t in [t for t in ("qsd", "ours", "base") if t in first]:
            f = med([r["all"]["iops"] for r in first.get(t, [])])
            steady = med([r["all"]["iops"] for r in runs.get((case, "q1", "4k_randwrite_QD32"), {}).get(t, [])])
            parts.append(f"{t} {fmt_iops(f)}" + (f" ({100 * f / steady:.0f}% of its steady {fmt_iops(steady)})" if f and steady else ""))
        lines.append("")
        lines.append("First second after start (4k randwrite QD32, 1 queue, no ramp, before any other I/O to the target; the load "
                     "generator warmed up for 3 s on a qemu-storage-daemon null-co export first; median over two fresh starts per round): " + ", ".join(parts))
    # 2 queues vs 1 for ours and qsd.
    if {"q1", "q2"} <= {k[1] for k in keys}:
        lines.append("")
        lines.append("Scaling, 2 queues / 1 queue (IOPS): " + ", ".join(
            f"{n.replace('_', ' ')}: qsd {ratio(med([r['all']['iops'] for r in runs.get((case,'q2',n),{}).get('qsd',[])]), med([r['all']['iops'] for r in runs.get((case,'q1',n),{}).get('qsd',[])]))}"
            f" / ours {ratio(med([r['all']['iops'] for r in runs.get((case,'q2',n),{}).get('ours',[])]), med([r['all']['iops'] for r in runs.get((case,'q1',n),{}).get('ours',[])]))}"
            for n in job_order if (case,'q1',n) in runs))
text = "\n".join(lines) + "\n"
with open(out, "w") as f: f.write(text)
print(text)
PY
log "report: $out"
