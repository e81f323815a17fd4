#!/bin/sh
# Guest job (busybox sh, --kind scsi only) for SCSI-3 persistent reservations on /dev/sda with sg3_utils'
# sg_persist, one initiator (two initiators on two exports of one shared disk: scsi-pr-two-initiators.sh):
# register, read keys, reserve (Write Exclusive), read reservation, report capabilities, read full status, a
# conflicting RESERVE of another type (RESERVATION CONFLICT, sg_persist exit status 24), a write by the holder,
# release, unregister; then COMPARE AND WRITE with sg_compare_and_write: a match that writes, a mismatch (MISCOMPARE,
# exit status 14, the offset of the first differing byte) that does not; every output is printed and checked.
# Leaves no registration behind (later tests write).
set -eu
fail() { echo "scsi-pr: FAIL: $*"; exit 1; }
D=/dev/sda
i=0
while [ ! -b $D ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
[ -b $D ] || fail "no $D"

P=scsi-pr
. /job-lib.sh   # run
expect() {  # expect TEXT: the last output contains TEXT and the command succeeded
    [ "$RC" -eq 0 ] || fail "exit status $RC"
    echo "$OUT" | grep -qF "$1" || fail "expected '$1'"
}

run sg_persist -n --in --read-keys $D
expect "there are NO registered reservation keys"
run sg_persist -n --out --register --param-sark=0x1234 $D
expect ""
run sg_persist -n --in --read-keys $D
expect "1 registered reservation key follows:"
expect "0x1234"
run sg_persist -n --in --report-capabilities $D
expect "Type Mask Valid(TMV): 1"
expect "Persist Through Power Loss Capable(PTPL_C): 0"
expect "Exclusive Access, all registrants: 1"
run sg_persist -n --out --reserve --param-rk=0x1234 --prout-type=1 $D
expect ""
run sg_persist -n --in --read-reservation $D
expect "Key=0x1234"
expect "type: Write Exclusive"
run sg_persist -n --in --read-full-status $D
expect "Key=0x1234"
expect "<< Reservation holder >>"
expect "SAS address: 0x3"
# Another type while holding one: RESERVATION CONFLICT (sg3_utils exit status 24).
run sg_persist -n --out --reserve --param-rk=0x1234 --prout-type=3 $D
[ "$RC" -eq 24 ] || fail "conflicting RESERVE: exit status $RC, expected 24 (reservation conflict)"
# A wrong reservation key: RESERVATION CONFLICT too.
run sg_persist -n --out --register --param-rk=0x9999 --param-sark=0x1 $D
[ "$RC" -eq 24 ] || fail "REGISTER with a wrong key: exit status $RC, expected 24"
# The holder writes.
run dd if=/dev/urandom of=$D bs=4096 count=16 seek=1024 oflag=direct
[ "$RC" -eq 0 ] || fail "the holder's write failed"
run sg_persist -n --out --release --param-rk=0x1234 --prout-type=1 $D
expect ""
run sg_persist -n --in --read-reservation $D
expect "there is NO reservation held"
run sg_persist -n --out --register --param-rk=0x1234 --param-sark=0 $D
expect ""
run sg_persist -n --in --read-keys $D
expect "there are NO registered reservation keys"
echo "scsi-pr: all persistent reservation checks passed"

# COMPARE AND WRITE (SBC-3 5.2) on LBA 4096: verify block, then write block, 512 bytes each.
dd if=/dev/zero bs=512 count=1 2>/dev/null | tr '\000' '\245' > /tmp/a5
dd if=/dev/zero bs=512 count=1 2>/dev/null | tr '\000' '\132' > /tmp/5a
dd if=/tmp/a5 of=$D bs=512 seek=4096 count=1 oflag=direct 2>/dev/null || fail "writing the block to compare"
cat /tmp/a5 /tmp/5a > /tmp/caw-match
run sg_compare_and_write --in=/tmp/caw-match --lba=4096 --num=1 $D
expect ""
run sh -c "dd if=$D bs=512 skip=4096 count=1 iflag=direct 2>/dev/null | od -An -tx1 | head -1"
expect "5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a"
# Verify data differing from the medium at byte 100: MISCOMPARE (sg3_utils exit status 14), nothing written.
{ head -c 100 /tmp/5a; printf '\001'; tail -c 411 /tmp/5a; cat /tmp/a5; } > /tmp/caw-mismatch
run sg_compare_and_write --in=/tmp/caw-mismatch --lba=4096 --num=1 $D
[ "$RC" -eq 14 ] || fail "mismatching COMPARE AND WRITE: exit status $RC, expected 14 (miscompare)"
echo "$OUT" | grep -qF "Miscompare at byte offset: 100 [0x64]" || fail "expected the miscompare at byte 100"
run sh -c "dd if=$D bs=512 skip=4096 count=1 iflag=direct 2>/dev/null | od -An -tx1 | head -1"
expect "5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a"
echo "scsi-pr: all compare and write checks passed"
