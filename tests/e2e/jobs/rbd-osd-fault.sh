#!/bin/sh
# Guest job for rbd-osd-fault (run-e2e.sh --backend rbd): back-to-back fio passes of 4k random writes + crc32c
# verify (verify_fatal=1) on both queues for a fixed window while the runner kills the cluster's only OSD, keeps it
# down a few seconds and starts it again; then one more pass with the cluster settled.
# Prints "E2E-RBD-FAULT-IO-START" when the window begins (the runner times the OSD kill from it) and
# "E2E-RBD-FAULT-IO-DONE passes=N" when it ends. A request the target failed while the OSD was away would show
# up as a fio error (verify_fatal and err=) or as a kernel "I/O error" line: both fail the job. Needs 256 MiB.
set -eu
dev=${E2E_DEV:-/dev/vda}
window=${E2E_RBD_FAULT_WINDOW_S:-15}
P=rbd-osd-fault
say() { echo "$P: $*"; }
. /job-lib.sh   # fio_verify_pass, fio_verify_window

fio_verify_window "$window" E2E-RBD-FAULT
pass=$((pass + 1))
fio_verify_pass "$pass"
say "fio pass $pass (after the OSD restart): verified, 0 errors"

# The block layer logs every failed request ("I/O error, dev vda, sector ..."); fio retries nothing, but check the
# kernel's view too, so an error on a request fio did not own (none here, but cheap) cannot pass unseen.
errors=$(dmesg | grep -c "I/O error" || true)
if [ "$errors" -ne 0 ]; then
    dmesg | grep "I/O error" | head -n 5
    say "FAIL: the kernel logged $errors I/O error(s)"
    exit 1
fi
say "no I/O errors in the kernel log"
