#!/usr/bin/env bash
# Starts a throwaway Ceph cluster for tests: one monitor and one memstore OSD on 127.0.0.1, everything (ceph.conf,
# keyrings, stores, logs, admin sockets, PIDs) under DIR, pool "rbd" with size 1. Ready in a few seconds.
#
# Usage: tests/ceph/start-cluster.sh [--bluestore] DIR   start; prints "export CEPH_CONF=DIR/ceph.conf"
#        tests/ceph/stop-cluster.sh [--remove] DIR        stop exactly the daemons started here (recorded PIDs)
#        tests/ceph/start-cluster.sh --osd DIR            (re)start only the OSD of a cluster started before
# memstore (the default) is ready in 2-3 s but loses everything when the OSD dies; --bluestore (a sparse 4 GiB file
# in DIR, a few seconds more) survives an OSD kill and restart, which the fault tests need.
# Needs ceph-mon, ceph-osd, ceph-common (tests/e2e/install-deps.sh installs them).
set -euo pipefail

osd_only=0 store=memstore
case "${1:-}" in
    --osd) osd_only=1; shift ;;
    --bluestore) store=bluestore; shift ;;
esac
dir=${1:?usage: start-cluster.sh [--osd|--bluestore] DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
conf=$dir/ceph.conf
export CEPH_CONF=$conf

for c in ceph-mon ceph-osd ceph ceph-authtool monmaptool rbd; do
    PATH="$PATH:/usr/sbin:/sbin" command -v "$c" >/dev/null || { echo "start-cluster: $c is missing (run tests/e2e/install-deps.sh)" >&2; exit 1; }
done

start_osd() {
    # Foreground mode (-f) in the background: the recorded PID is the daemon's own.
    ceph-osd -f -c "$conf" -i 0 >>"$dir/osd.0.out" 2>&1 &
    echo $! >"$dir/osd.0.pid"
}

wait_osd_up() {
    for _ in $(seq 1 300); do
        if ceph osd dump 2>/dev/null | grep -q '^osd.0 up'; then return 0; fi
        sleep 0.1
    done
    echo "start-cluster: osd.0 did not come up (see $dir/osd.0.log)" >&2
    return 1
}

if [[ $osd_only == 1 ]]; then
    start_osd
    wait_osd_up
    exit 0
fi

if [[ -e "$dir/mon.pid" ]]; then echo "start-cluster: $dir already holds a cluster (stop it first)" >&2; exit 1; fi

# A free port for the monitor (3300 unless taken).
port=3300
while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done

fsid=$(cat /proc/sys/kernel/random/uuid)
cat >"$conf" <<CONF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$port
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
ms bind ipv4 = true
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
run dir = $dir
admin socket = $dir/\$name.asok
log file = $dir/\$name.log
pid file =
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon allow pool delete = true
osd crush chooseleaf type = 0
paxos propose interval = 0.05
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
[mon]
mon data = $dir/mon.\$id
[osd]
osd objectstore = $store
osd data = $dir/osd.\$id
osd journal size = 0
memstore device bytes = 1073741824
bluestore block create = true
bluestore block size = 4294967296
bluestore fsck on mount = false
osd memory target = 536870912
[client]
keyring = $dir/client.admin.keyring
CONF

ceph-authtool --create-keyring "$dir/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool --create-keyring "$dir/client.admin.keyring" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
ceph-authtool "$dir/mon.keyring" --import-keyring "$dir/client.admin.keyring" >/dev/null
monmaptool --create --addv a "[v2:127.0.0.1:$port]" --fsid "$fsid" "$dir/monmap" >/dev/null
ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/mon.keyring" >>"$dir/mon.out" 2>&1
ceph-mon -f -c "$conf" -i a >>"$dir/mon.out" 2>&1 &
echo $! >"$dir/mon.pid"

# The OSD store is made while the monitor starts.
osd_uuid=$(cat /proc/sys/kernel/random/uuid)
mkdir -p "$dir/osd.0"
ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$osd_uuid" --no-mon-config >>"$dir/osd.0.out" 2>&1
osd_key=$(ceph-authtool --gen-print-key)
printf '[osd.0]\n\tkey = %s\n' "$osd_key" >"$dir/osd.0/keyring"

for _ in $(seq 1 100); do
    if timeout 5 ceph -s >/dev/null 2>&1; then break; fi
    sleep 0.1
done
echo "{\"cephx_secret\": \"$osd_key\"}" >"$dir/osd.0/new.json"
ceph osd new "$osd_uuid" 0 -i "$dir/osd.0/new.json" >/dev/null
ceph health mute MGR_DOWN >/dev/null 2>&1 || true
start_osd
ceph osd pool create rbd 8 >/dev/null 2>&1
ceph osd pool set rbd size 1 --yes-i-really-mean-it >/dev/null 2>&1 || true
wait_osd_up
rbd pool init rbd
echo "export CEPH_CONF=$conf"
