#!/usr/bin/env bash
# Runs the fio job files of bench/fio inside a QEMU guest (the e2e harness: tests/e2e/run-guest.sh, TCG)
# against one target, and collects fio's JSON output per job.
#
# Usage:
#   bench/fio/run-fio-guest.sh --target blktarget|qsd [--backend ram|file] [--queues N] [--runtime S]
#                              [--jobs NAME,NAME...] [--out DIR] [--guest-timeout S]
#
#   --target    blktarget: `blktarget serve` ($BLKTARGET_CMD, default: dotnet <repo>/src/BlkTarget/bin/
#               Release/net10.0/blktarget.dll; build it first with dotnet build -c Release src/BlkTarget)
#               qsd: qemu-storage-daemon
#   --backend   ram (default): blktarget ram:1G / qsd on a file in /dev/shm (cache.direct=off)
#               file: a 1 GiB file in /var/tmp, O_DIRECT (qsd: aio=io_uring)
#   --queues    device queues (default 2); fio runs one job per queue, each pinned to its own vCPU
#   --runtime   seconds per fio job (default 5, after a 1 s ramp)
#   --jobs      job names (default: all *.fio here, in the matrix order)
#   --out       where <job>.json and summary.md go (default bench/fio/results/<date>-<target>-<backend>)
#
# One guest boot runs every job in turn. Under TCG the guest CPU, not the target, is the limit (a few
# thousand IOPS for any target): these numbers show that a real virtio-blk driver works at every depth
# and size, not how fast the target is. Use bench/compare.sh for speed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
log() { echo "run-fio-guest: $*" >&2; }
die() { log "ERROR: $*"; exit 2; }

target="" backend=ram queues=2 runtime=5 jobs="" out="" guest_timeout=600
while [[ $# -gt 0 ]]; do
    case "$1" in
        --target) target=$2; shift 2 ;;
        --backend) backend=$2; shift 2 ;;
        --queues) queues=$2; shift 2 ;;
        --runtime) runtime=$2; shift 2 ;;
        --jobs) jobs=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --guest-timeout) guest_timeout=$2; shift 2 ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
done
case "$target" in blktarget|qsd) ;; *) die "--target must be blktarget or qsd" ;; esac
case "$backend" in ram|file) ;; *) die "--backend must be ram or file" ;; esac
[[ "$queues" =~ ^[1-9][0-9]*$ ]] || die "--queues must be a positive integer"
[[ "$runtime" =~ ^[1-9][0-9]*$ ]] || die "--runtime must be whole seconds"
command -v python3 >/dev/null || die "python3 not found"

if [[ -z "$jobs" ]]; then
    jobs="randread-4k-qd1,randread-4k-qd32,randwrite-4k-qd32,read-128k-qd8,write-128k-qd8"
fi
IFS=, read -ra JOBS <<< "$jobs"
for j in "${JOBS[@]}"; do [[ -f "$HERE/$j.fio" ]] || die "no job file $HERE/$j.fio"; done
out=${out:-$HERE/results/$(date +%F)-$target-$backend-q$queues}
mkdir -p "$out"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/blktarget-fio.XXXXXX")
target_pid=""
image=""
cleanup() {
    if [[ -n "$target_pid" ]]; then
        kill "$target_pid" 2>/dev/null || true
        wait "$target_pid" 2>/dev/null || true
    fi
    [[ -n "$image" ]] && rm -f "$image"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

sock="$WORK/vhost.sock"
case "$backend" in
    ram) image="/dev/shm/blktarget-fio-$$.img"; truncate -s 1G "$image" ;;
    file) image="/var/tmp/blktarget-fio-$$.img"; dd if=/dev/zero of="$image" bs=1M count=1024 oflag=direct status=none ;;
esac
if [[ "$target" == qsd ]]; then
    command -v qemu-storage-daemon >/dev/null || die "qemu-storage-daemon not found (tests/e2e/install-deps.sh)"
    opts="cache.direct=off"
    [[ "$backend" == file ]] && opts="cache.direct=on,aio=io_uring"
    qemu-storage-daemon --blockdev "driver=file,node-name=f0,filename=$image,$opts" \
        --export "type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path=$sock,writable=on,num-queues=$queues" \
        >"$WORK/target.log" 2>&1 &
else
    cmd=${BLKTARGET_CMD:-dotnet $REPO/src/BlkTarget/bin/Release/net10.0/blktarget.dll}
    spec="ram:1G"
    [[ "$backend" == file ]] && spec="file:$image"
    # shellcheck disable=SC2086  # BLKTARGET_CMD is a command line
    $cmd serve --socket "$sock" --backend "$spec" --queues "$queues" --log-level warning >"$WORK/target.log" 2>&1 &
fi
target_pid=$!
for _ in $(seq 1 300); do
    [[ -S "$sock" ]] && break
    kill -0 "$target_pid" 2>/dev/null || { cat "$WORK/target.log" >&2; die "the target exited"; }
    sleep 0.1
done
[[ -S "$sock" ]] || die "the target did not create $sock"

# The guest job: each fio job file embedded, run in turn, JSON printed between markers on the console.
cpus="0"
(( queues > 1 )) && cpus="0-$((queues - 1))"
{
    echo '#!/bin/sh'
    echo 'set -u'
    echo 'mkdir -p /tmp'
    echo "export FIO_DEV=\${E2E_DEV:-/dev/vda} FIO_RUNTIME=$runtime FIO_NUMJOBS=$queues FIO_CPUS=$cpus"
    echo 'rc=0'
    for j in "${JOBS[@]}"; do
        echo "cat > /tmp/$j.fio <<'FIOJOB'"
        cat "$HERE/$j.fio"
        echo "FIOJOB"
        echo "echo FIO-JSON-BEGIN $j"
        echo "fio --output-format=json /tmp/$j.fio || rc=1"
        echo "echo FIO-JSON-END $j"
    done
    # shellcheck disable=SC2016  # $rc is the guest script's variable
    echo 'exit $rc'
} > "$WORK/job.sh"

log "booting the guest against $target ($backend, $queues queue(s)); ${#JOBS[@]} job(s) of ${runtime}s"
console="$out/console.log"
bash "$REPO/tests/e2e/run-guest.sh" --socket "$sock" --job "$WORK/job.sh" --queues "$queues" --smp "$(( queues > 2 ? queues : 2 ))" \
    --timeout "$guest_timeout" --log "$console"

python3 - "$console" "$out" "$target" "$backend" "$queues" <<'PY'
import json, re, sys
console, out, target, backend, queues = sys.argv[1:]
text = open(console, errors="replace").read().replace("\r", "")
rows = []
for m in re.finditer(r"FIO-JSON-BEGIN (\S+)\n(.*?)FIO-JSON-END \1", text, re.S):
    name, body = m.group(1), m.group(2)
    start = body.find("{")
    data = json.loads(body[start:body.rfind("}") + 1])
    with open(f"{out}/{name}.json", "w") as f: json.dump(data, f, indent=1)
    job = data["jobs"][0]
    side = job["write"] if job["write"]["io_bytes"] > job["read"]["io_bytes"] else job["read"]
    rows.append((name, side["iops"], side["bw"] / 1024, side["clat_ns"]["mean"] / 1000, job["error"]))
lines = [f"# fio in a TCG guest: {target}, {backend}, {queues} queue(s)", "",
         "Guest-bound numbers (TCG): they show compatibility, not target speed.", "",
         "| job | IOPS | MiB/s | mean clat µs | errors |", "|---|---|---|---|---|"]
lines += [f"| {n} | {i:.0f} | {b:.1f} | {l:.1f} | {e} |" for n, i, b, l, e in rows]
open(f"{out}/summary.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
log "results in $out"
