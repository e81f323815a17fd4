#!/bin/sh
# Helpers for guest jobs (busybox sh): run-guest.sh puts this file into every guest as /job-lib.sh; a job sources it
# with `. /job-lib.sh` after setting P, the prefix of its console lines.

run() {  # run CMD...: prints "$P: $ CMD" and its output; the output is in $OUT, the exit status in $RC
    echo "$P: \$ $*"
    RC=0
    OUT=$("$@" 2>&1) || RC=$?
    echo "$OUT" | sed "s/^/$P:   /"
    echo "$P:   (exit $RC)"
}
