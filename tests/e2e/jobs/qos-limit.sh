#!/bin/sh
# Guest job (busybox sh) of qos-limit (blk ram runs): before this VM booted the host limited export vm-q to 500 IOPS
# (`blktarget qos set vm-q --iops-total 500`). fio 4k random reads at depth 16 must measure 500 +- 10%. The ramp
# spends the one second's burst a fresh limit starts with; the guest alone would do several thousand IOPS here.
set -eu
P=qos-limit
. /job-lib.sh
dev=${E2E_DEV:-/dev/vda}
limit=${E2E_QOS_IOPS:-500}
run fio --name=qos --filename="$dev" --direct=1 --ioengine=libaio --rw=randread --bs=4k --iodepth=16 --size=128M \
    --time_based --ramp_time=3 --runtime=10 --output-format=terse --terse-version=3
[ "$RC" -eq 0 ] || { echo "$P: FAIL: fio exit status $RC"; exit 1; }
# Terse v3: field 8 is the read IOPS.
iops=$(echo "$OUT" | grep '^3;' | tail -n 1 | cut -d';' -f8)
[ -n "$iops" ] || { echo "$P: FAIL: no IOPS in fio's output"; exit 1; }
echo "E2E-QOS-IOPS=$iops limit=$limit"
lo=$((limit * 9 / 10)) hi=$((limit * 11 / 10))
[ "$iops" -ge "$lo" ] && [ "$iops" -le "$hi" ] || { echo "$P: FAIL: $iops IOPS is not within 10% of $limit"; exit 1; }
echo "$P: $iops IOPS under a $limit IOPS limit: OK"
