# shellcheck shell=bash
# Sourced by run-e2e.sh for `--backend rbd`: a throwaway Ceph cluster for the run (tests/ceph/start-cluster.sh: one
# monitor, one bluestore OSD on 127.0.0.1 under /var/tmp), an image on it for the target, and the rbd-osd-fault test.
# Kept apart from run-e2e.sh so the suite itself only gains a few hook lines. Uses run-e2e.sh's info/pass/fail,
# $REPO, $HERE, $log_dir, $WORK, $SOCK, $queues, $kind, $guest_dir, $guest_timeout, $verbose, $packed, target_alive.

RBD_DIR=""
# bluestore, not memstore: the fault test kills the OSD and restarts it, and a memstore OSD comes back empty.
# The image is thin: fio-verify addresses up to 768 MiB but writes ~200 MiB, ext4 ~40 MiB.
RBD_IMAGE=e2e RBD_IMAGE_SIZE=${E2E_RBD_IMAGE_SIZE:-1G}

# Starts the cluster and creates the image; sets backend to the target's spec. Non-zero (with the reason printed)
# when anything is missing or does not start: the caller fails the suite (never a skip, CI or not).
rbd_cluster_start() {
    local t0=$SECONDS
    RBD_DIR=$(mktemp -d /var/tmp/blktarget-e2e-ceph.XXXXXX)
    if ! "$REPO/tests/ceph/start-cluster.sh" --bluestore "$RBD_DIR" > "$log_dir/ceph-cluster.log" 2>&1; then
        tail -n 20 "$log_dir/ceph-cluster.log" | sed 's/^/[ceph] /'
        tail -n 20 "$RBD_DIR/osd.0.out" "$RBD_DIR/mon.out" 2>/dev/null | sed 's/^/[ceph] /'
        return 1
    fi
    if ! CEPH_CONF="$RBD_DIR/ceph.conf" timeout 60 rbd create --size "$RBD_IMAGE_SIZE" "rbd/$RBD_IMAGE" >> "$log_dir/ceph-cluster.log" 2>&1; then
        tail -n 20 "$log_dir/ceph-cluster.log" | sed 's/^/[ceph] /'
        return 1
    fi
    backend="rbd:rbd/$RBD_IMAGE,conf=$RBD_DIR/ceph.conf"
    info "ceph: cluster (1 mon, 1 bluestore OSD) up under $RBD_DIR and image rbd/$RBD_IMAGE ($RBD_IMAGE_SIZE, thin) created in $((SECONDS - t0))s"
}

# Stops exactly the daemons start-cluster.sh started (their recorded PIDs) and removes the directory; the cluster's
# logs go to the log directory first. Called from run-e2e.sh's EXIT trap, after the target is gone.
rbd_cluster_stop() {
    [[ -n "$RBD_DIR" ]] || return 0
    local f
    for f in "$RBD_DIR"/*.log "$RBD_DIR"/*.out; do [[ -f "$f" ]] && cp "$f" "$log_dir/ceph-$(basename "$f")"; done
    "$REPO/tests/ceph/stop-cluster.sh" --remove "$RBD_DIR" || true
    RBD_DIR=""
}

# osd.0's up_from epoch: a restarted OSD that the monitor has taken back gets a new one.
rbd_osd_up_from() {
    CEPH_CONF="$RBD_DIR/ceph.conf" timeout 10 ceph osd dump 2>/dev/null | awk '$1 == "osd.0" && $2 == "up" { for (i = 3; i < NF; i++) if ($i == "up_from") print $(i + 1) }'
}

# rbd-osd-fault: the guest runs fio verify passes on the rbd disk while osd.0 is killed (kill -9), kept down
# E2E_RBD_OSD_DOWN_S seconds (default 4) and started again. librbd queues the requests meanwhile; the target must
# keep serving, the guest must see no error and every verify must pass.
run_rbd_osd_fault() {
    local name=rbd-osd-fault console="$log_dir/rbd-osd-fault.console.log" t0=$SECONDS rc=0 why="" down=${E2E_RBD_OSD_DOWN_S:-4}
    (( down >= 2 )) || down=2   # the check below needs a second of downtime after the kill settles
    if [[ -z "$RBD_DIR" ]]; then fail "$name" "needs --backend rbd (a cluster this run started)"; return; fi
    if ! target_alive; then fail "$name" "target is not running"; return; fi
    info "running $name ..."
    rm -f "$console"
    local args=(--socket "$SOCK" --job "$HERE/jobs/$name.sh" --queues "$queues" --kind "$kind"
        --timeout "$guest_timeout" --guest-dir "$guest_dir" --log "$console")
    [[ $verbose -eq 0 ]] || args+=(--verbose)
    [[ $packed -eq 0 ]] || args+=(--packed)
    "$HERE/run-guest.sh" "${args[@]}" > "$log_dir/$name.run.log" 2>&1 &
    guest_pid=$!
    until grep -aq "E2E-RBD-FAULT-IO-START" "$console" 2>/dev/null; do
        if ! kill -0 "$guest_pid" 2>/dev/null; then why="the guest ended before its I/O started"; break; fi
        sleep 0.2
    done
    # A few seconds of I/O first, so the kill catches requests in flight rather than an idle disk.
    [[ -n "$why" ]] || sleep 3
    if [[ -z "$why" ]] && grep -aq "E2E-RBD-FAULT-IO-DONE" "$console"; then why="the guest's I/O window ended before the OSD was stopped"; fi
    if [[ -z "$why" ]]; then
        local up_from passes_before passes_after t_up
        up_from=$(rbd_osd_up_from)
        "$REPO/tests/ceph/stop-cluster.sh" --osd "$RBD_DIR"
        info "$name: osd.0 killed (kill -9); down for ${down}s"
        # No pass can finish without the OSD (its writes and flush need it): one that does after the first second
        # (a pass ending just as the kill landed may still print) means the kill did not stop the I/O path, and the
        # test would prove nothing.
        sleep 1
        passes_before=$(grep -ac "rbd-osd-fault: fio pass" "$console" || true)
        sleep "$((down - 1))"
        passes_after=$(grep -ac "rbd-osd-fault: fio pass" "$console" || true)
        info "$name: fio passes finished in the last $((down - 1))s of the downtime: $((passes_after - passes_before)) (requests wait in librbd)"
        (( passes_after == passes_before )) || why="fio passes finished while osd.0 was down: the kill did not stop the I/O"
        t_up=$SECONDS
        if ! "$REPO/tests/ceph/start-cluster.sh" --osd "$RBD_DIR" >> "$log_dir/ceph-cluster.log" 2>&1; then
            why="osd.0 did not start again (see $log_dir/ceph-cluster.log)"
        else
            # start-cluster.sh --osd returns as soon as the map says "up", which the old instance still does (one OSD:
            # no peer reports it down): wait until the monitor has taken the new instance in (a new up_from).
            # (Empty while the map shows it down between the two instances.)
            local now=""
            while now=$(rbd_osd_up_from); [[ -z "$now" || "$now" == "$up_from" ]] && (( SECONDS - t_up < 60 )); do sleep 0.2; done
            if [[ -z "$now" || "$now" == "$up_from" ]]; then why="the monitor did not take the restarted osd.0 back within 60s"
            else info "$name: osd.0 started again, back in the map (up_from $up_from -> $now) after $((SECONDS - t_up))s"; fi
        fi
        if [[ -z "$why" ]] && grep -aq "E2E-RBD-FAULT-IO-DONE" "$console"; then why="the guest's I/O window ended before the OSD was back"; fi
    fi
    if [[ -n "$why" ]]; then kill -TERM "$guest_pid" 2>/dev/null || true; fi
    # The guest keeps verifying after the restart; a target that died meanwhile fails the test (the guest's I/O
    # would only hang, so stop it a few seconds after the target is gone).
    local dead_since=""
    while kill -0 "$guest_pid" 2>/dev/null; do
        if ! target_alive; then
            dead_since=${dead_since:-$SECONDS}
            if (( SECONDS - dead_since >= 5 )); then why=${why:-the target died during the test}; kill -TERM "$guest_pid" 2>/dev/null || true; break; fi
        fi
        sleep 0.5
    done
    wait "$guest_pid" || rc=$?
    guest_pid=""
    tr -d '\r' < "$console" 2>/dev/null | grep -aE "E2E-RBD-FAULT-IO-DONE|rbd-osd-fault: " | sed 's/^/[guest] /' || true
    if [[ -z "$why" && $rc -eq 0 ]] && target_alive; then
        info "$name passed in $((SECONDS - t0))s"
        pass "$name"
        return
    fi
    [[ -n "$why" ]] || target_alive || why="the target died during the test"
    sed 's/^/[guest] /' "$log_dir/$name.run.log" | tail -n 40
    target_tail
    fail "$name" "${why:-guest failed after $((SECONDS - t0))s} (console: $console)"
}
