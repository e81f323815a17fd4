#!/usr/bin/env bash
# Split vs packed virtqueues against one BlkTarget on a RAM disk, same run, alternating which ring layout goes
# first in each round; prints a markdown table of medians (IOPS) per job.
#
# Usage: bench/packed-compare.sh [--rounds N] [--runtime S] [--no-build]
#   --rounds   rounds (default 5); --runtime measured seconds per job (default 3, after 1 s ramp)
# Pinned like compare.sh --pin: the load generator on CPU 0, the target's reactor on CPU 1. The disk is filled
# once before reads. Needs the .NET SDK and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=5 runtime=3 build=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --runtime) runtime=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        *) echo "packed-compare: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ $build -eq 0 ]] || dotnet build src/BlkTarget -c Release -nologo -v quiet >/dev/null
DLL=$PWD/src/BlkTarget/bin/Release/net10.0/blktarget.dll
WORK=$(mktemp -d /tmp/blktarget-packed.XXXXXX)
SOCK=$WORK/t.sock
target_pid=""
cleanup() { [[ -z "$target_pid" ]] || kill "$target_pid" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
dotnet "$DLL" serve --socket "$SOCK" --backend ram:1G --queues 1 --cpus 1 >"$WORK/target.log" 2>&1 &
target_pid=$!
for _ in $(seq 100); do [[ -S "$SOCK" ]] && break; sleep 0.1; done
[[ -S "$SOCK" ]] || { cat "$WORK/target.log" >&2; exit 1; }
bench() { dotnet "$DLL" bench --socket "$SOCK" --cpus 0 --json "$@"; }
bench --rw write --bs 1M --iodepth 4 --size 1G >/dev/null
JOBS=("randread-qd1|--rw randread --bs 4k --iodepth 1" "randread-qd32|--rw randread --bs 4k --iodepth 32"
      "randwrite-qd32|--rw randwrite --bs 4k --iodepth 32")
for round in $(seq 1 "$rounds"); do
    order=(split packed)
    (( round % 2 == 0 )) && order=(packed split)
    for job in "${JOBS[@]}"; do
        name=${job%%|*}
        read -ra args <<< "${job#*|}"
        for ring in "${order[@]}"; do
            extra=()
            [[ $ring == packed ]] && extra=(--packed)
            bench "${args[@]}" --runtime "$runtime" --ramp 1 "${extra[@]}" >"$WORK/$name--$ring--r$round.json"
        done
    done
done
python3 - "$WORK" "$rounds" <<'PY'
import json, sys, glob, statistics, os
work, rounds = sys.argv[1], int(sys.argv[2])
jobs = ["randread-qd1", "randread-qd32", "randwrite-qd32"]
print("| job | split IOPS (median) | packed IOPS (median) | packed/split | split rounds | packed rounds |")
print("|---|---|---|---|---|---|")
for job in jobs:
    row = {}
    for ring in ("split", "packed"):
        vals = []
        for f in sorted(glob.glob(os.path.join(work, f"{job}--{ring}--r*.json"))):
            d = json.load(open(f))
            vals.append(sum(q["iops"] for q in d["queues"]))
        row[ring] = vals
    s, p = statistics.median(row["split"]), statistics.median(row["packed"])
    fmt = lambda v: " ".join(f"{x/1000:.0f}K" for x in v)
    print(f"| 4k {job} | {s/1000:.0f}K | {p/1000:.0f}K | {p/s:.2f} | {fmt(row['split'])} | {fmt(row['packed'])} |")
PY
