#!/bin/sh
# Guest job (busybox sh) for the first VM on a target managed over RPC: fio 4k random writes with crc32c verify, pass
# after pass, for at least 45 s. After E2E-FIO-RUNNING the host creates a second disk and export over RPC and boots a
# second VM on it; this VM's I/O must not see a single error meanwhile (verify_fatal: any mismatch fails the job).
set -eu
dev=${E2E_DEV:-/dev/vda}
echo "E2E-FIO-RUNNING"
start=$(date +%s)
pass=0
while :; do
    pass=$((pass + 1))
    offset=$(( (pass % 8) * 16 ))
    fio --name="attach$pass" --filename="$dev" --direct=1 --ioengine=libaio --rw=randwrite --bs=4k --iodepth=16 \
        --offset="${offset}M" --size=16M --verify=crc32c --verify_fatal=1 --do_verify=1 --end_fsync=1 --eta=never \
        --output=/tmp/fio.out || { cat /tmp/fio.out; echo "fio-during-attach: FAIL in pass $pass"; exit 1; }
    grep -q "err= 0" /tmp/fio.out || { cat /tmp/fio.out; echo "fio-during-attach: FAIL: pass $pass reported an error"; exit 1; }
    elapsed=$(( $(date +%s) - start ))
    echo "fio-during-attach: pass $pass (16 MiB at ${offset} MiB, verified) ok after ${elapsed}s"
    [ "$elapsed" -lt 45 ] || [ "$pass" -lt 2 ] || break
done
echo "fio-during-attach: $pass passes, 0 errors"
