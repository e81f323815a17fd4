#!/usr/bin/env bash
# Stops the daemons tests/ceph/start-cluster.sh started under DIR (by their recorded PIDs, nothing else), and with
# --remove deletes DIR. Usage: tests/ceph/stop-cluster.sh [--remove] DIR   or   stop-cluster.sh --osd DIR (OSD only)
set -uo pipefail
remove=0 osd_only=0
case "${1:-}" in --remove) remove=1; shift ;; --osd) osd_only=1; shift ;; esac
dir=${1:?usage: stop-cluster.sh [--remove|--osd] DIR}
names=(osd.0)
[[ $osd_only == 1 ]] || names+=(mon)
for name in "${names[@]}"; do
    pidfile=$dir/$name.pid
    [[ -f $pidfile ]] || continue
    pid=$(cat "$pidfile")
    kill -9 "$pid" 2>/dev/null || true
    # The parent here may reap late: wait until the process is gone or a zombie.
    for _ in $(seq 1 50); do
        state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo gone)
        [[ $state == gone || $state == Z ]] && break
        sleep 0.05
    done
    rm -f "$pidfile"
done
if [[ $remove == 1 ]]; then rm -rf "$dir"; fi
exit 0
