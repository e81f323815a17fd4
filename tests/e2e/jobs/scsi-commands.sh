#!/bin/sh
# Guest job (busybox sh, --kind scsi only) for the SPC-4/SBC-3 commands of issue 16 besides persistent reservations
# (scsi-pr.sh), with sg3_utils on /dev/sda of the main target: WRITE SAME(16/10) with a non-zero block, with UNMAP and
# a non-zero block (written, not unmapped), with UNMAP and a zero block (reads zeros); REPORT SUPPORTED OPERATION
# CODES one-command usage data (the exact SBC-3 masks of the bits the device server evaluates); START STOP UNIT (after
# a STOP, TEST UNIT READY and READ give NOT READY, LOGICAL UNIT NOT READY, INITIALIZING COMMAND REQUIRED until a
# START); VPD 86h (Extended INQUIRY data) and the target port designator of VPD 83h. Every expected value is written
# out here; each check fails if the target answers otherwise. Ends with the LUN started (later tests use it).
set -eu
P=scsi-commands
fail() { echo "$P: FAIL: $*"; exit 1; }
D=/dev/sda
i=0
while [ ! -b $D ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
[ -b $D ] || fail "no $D"
for t in sg_write_same sg_opcodes sg_start sg_turs sg_dd sg_inq; do
    command -v $t >/dev/null || fail "$t is not in the guest image (tests/e2e/build-guest.sh SG_TOOLS)"
done

. /job-lib.sh   # run
expect_rc() {  # expect_rc N: the last command exited with N
    [ "$RC" -eq "$1" ] || fail "exit status $RC, expected $1"
}
expect() {  # expect LINE: the last output has a line that is exactly LINE (leading/trailing blanks ignored)
    echo "$OUT" | sed 's/^[[:space:]]*//; s/[[:space:]]*$//' | grep -qxF "$1" || fail "expected the line '$1'"
}

BS=$(cat /sys/block/sda/queue/logical_block_size)
echo "$P: logical block size $BS"
block() { dd if=/dev/zero bs="$BS" count=1 2>/dev/null | tr '\000' "$1"; }   # block OCTAL-ESCAPE: one block of that byte
block '\245' > /tmp/a5
block '\000' > /tmp/zero
# Expected read-back of [LBA-1, LBA+9): a zero guard block on each side of 8 blocks of BYTE.
expected() { { cat /tmp/zero; for _ in 1 2 3 4 5 6 7 8; do cat "$1"; done; cat /tmp/zero; } > /tmp/expected; }
# Zeros over [LBA-1, LBA+9) with plain writes first, so what WRITE SAME writes (and only that) shows.
clear_range() { dd if=/dev/zero of=$D bs="$BS" seek=$(($1 - 1)) count=10 oflag=direct 2>/dev/null || fail "clearing LBA $1"; }
fill_range() { for _ in 1 2 3 4 5 6 7 8; do cat /tmp/a5; done | dd of=$D bs="$BS" seek="$1" count=8 oflag=direct 2>/dev/null || fail "filling LBA $1"; }
check_range() {  # check_range LBA BLOCKFILE: the range holds 8 copies of BLOCKFILE between zero guard blocks
    expected "$2"
    dd if=$D bs="$BS" skip=$(($1 - 1)) count=10 iflag=direct 2>/dev/null > /tmp/got || fail "reading back LBA $1"
    echo "$P:   read back LBA $(($1 - 1))..$(($1 + 8)) (od -Ad -tx1):"
    od -Ad -tx1 /tmp/got | sed "s/^/$P:     /"
    cmp /tmp/got /tmp/expected || fail "LBA $1: the blocks read back are not 8 x $(od -An -tx1 "$2" | head -c 3) between zero guard blocks"
}

# ---- WRITE SAME (SBC-3 5.42/5.43): the one Data-Out block goes to every LBA of the range ----
clear_range 6144
run sg_write_same --16 --in=/tmp/a5 --lba=6144 --num=8 $D
expect_rc 0
check_range 6144 /tmp/a5
clear_range 6160
run sg_write_same --10 --in=/tmp/a5 --lba=6160 --num=8 $D
expect_rc 0
check_range 6160 /tmp/a5
# UNMAP with a non-zero block: the device writes it (4.7.3.3); unmapping would read back zeros.
clear_range 6176
run sg_write_same --16 --unmap --in=/tmp/a5 --lba=6176 --num=8 $D
expect_rc 0
check_range 6176 /tmp/a5
clear_range 6192
run sg_write_same --10 --unmap --in=/tmp/a5 --lba=6192 --num=8 $D
expect_rc 0
check_range 6192 /tmp/a5
# UNMAP with a zero block over written data: the range reads zeros afterwards.
clear_range 6208
fill_range 6208
run sg_write_same --16 --unmap --in=/tmp/zero --lba=6208 --num=8 $D
expect_rc 0
check_range 6208 /tmp/zero
echo "$P: WRITE SAME checks passed"

# ---- REPORT SUPPORTED OPERATION CODES, one command (SPC-4 6.35.3): CDB usage data ----
# A bit is 1 where the device server evaluates it: a field it uses, or one it refuses when set (RDPROTECT, WRPROTECT,
# ANCHOR, PBDATA, LBDATA: no protection information, no anchored LBAs); ignored (DPO, FUA of a read, GROUP NUMBER,
# IMMED of SYNCHRONIZE CACHE, POWER CONDITION MODIFIER), obsolete and reserved bits are 0; the control byte is 04h,
# NACA (checked: refused). -R asks for the command timeouts descriptor too (no timeouts given).
opcode() {  # opcode OPCODE USAGE [SA]: the one-command usage data is exactly USAGE
    if [ $# -eq 3 ]; then run sg_opcodes -R -o "$1" -s "$3" $D; else run sg_opcodes -R -o "$1" $D; fi
    expect_rc 0
    expect "Command is supported [conforming to SCSI standard]"
    expect "Usage data: $2"
    expect "no nominal timeout, no recommended timeout"
}
opcode 0x00 "00 00 00 00 00 04"                                            # TEST UNIT READY
opcode 0x1b "1b 01 00 00 f7 04"                                            # START STOP UNIT: IMMED; POWER CONDITION, NO_FLUSH, LOEJ, START
opcode 0x28 "28 e0 ff ff ff ff 00 ff ff 04"                                # READ(10): RDPROTECT, LBA, TRANSFER LENGTH
opcode 0x2a "2a e8 ff ff ff ff 00 ff ff 04"                                # WRITE(10): WRPROTECT, FUA, LBA, TRANSFER LENGTH
opcode 0x35 "35 00 ff ff ff ff 00 ff ff 04"                                # SYNCHRONIZE CACHE(10): LBA, NUMBER OF BLOCKS
opcode 0x41 "41 fe ff ff ff ff 00 ff ff 04"                                # WRITE SAME(10): WRPROTECT, ANCHOR, UNMAP, PBDATA, LBDATA
opcode 0x93 "93 ff ff ff ff ff ff ff ff ff ff ff ff ff 00 04"              # WRITE SAME(16): + NDOB
opcode 0x89 "89 e8 ff ff ff ff ff ff ff ff 00 00 00 ff 00 04"              # COMPARE AND WRITE: WRPROTECT, FUA, LBA, NUMBER OF BLOCKS
opcode 0x9e "9e 1f 00 00 00 00 00 00 00 00 ff ff ff ff 00 04" 0x10         # READ CAPACITY(16): SERVICE ACTION, ALLOCATION LENGTH
# An operation code the LU does not support (FORMAT UNIT): SUPPORT 001b.
run sg_opcodes -R -o 0x04 $D
expect_rc 0
echo "$OUT" | grep -qF "NOT supported" || fail "expected FORMAT UNIT to be reported as NOT supported"
echo "$OUT" | grep -qF "Usage data" && fail "usage data for an unsupported command"
echo "$P: REPORT SUPPORTED OPERATION CODES checks passed"

# ---- START STOP UNIT (SBC-3 5.25, 4.19) ----
run sg_turs $D
expect_rc 0
run sg_start --stop $D
expect_rc 0
# sg3_utils exit status 2: NOT READY; -v prints the sense, whose ASC/ASCQ 04h/02h is the line below.
run sg_turs -v $D
expect_rc 2
echo "$OUT" | grep -qF "Not Ready" || fail "TEST UNIT READY after STOP: expected sense key Not Ready"
expect "Additional sense: Logical unit not ready, initializing command required"
# sg_dd -v prints the READ's sense; exit status 2: NOT READY.
run sg_dd -v blk_sgio=1 if=$D of=/dev/null bs="$BS" skip=6144 count=1
expect_rc 2
expect "Device (r) not ready"
expect "Additional sense: Logical unit not ready, initializing command required"
run dd if=$D of=/dev/null bs="$BS" skip=6144 count=1 iflag=direct
[ "$RC" -ne 0 ] || fail "READ (dd iflag=direct) after STOP succeeded"
run sg_start --start $D
expect_rc 0
run sg_turs $D
expect_rc 0
run sg_dd blk_sgio=1 if=$D of=/dev/null bs="$BS" skip=6144 count=1
expect_rc 0
run dd if=$D of=/tmp/got bs="$BS" skip=6144 count=1 iflag=direct
expect_rc 0
cmp /tmp/got /tmp/a5 || fail "LBA 6144 after START: not the WRITE SAME block"
echo "$P: START STOP UNIT checks passed"

# ---- VPD 86h, Extended INQUIRY data (SPC-4 7.8.7) ----
# SIMPSUP only among the task attributes (HEAD OF QUEUE and ORDERED run as SIMPLE: HEADSUP, ORDSUP 0), V_SUP (a
# volatile write cache, WCE changeable), LUICLR (SPC-4: shall be one; I_T nexus state goes with the nexus), no
# protection information, nothing else.
run sg_inq -p 0x86 $D
expect_rc 0
expect "ACTIVATE_MICROCODE=0 SPT=0 GRD_CHK=0 APP_CHK=0 REF_CHK=0"
expect "UASK_SUP=0 GROUP_SUP=0 PRIOR_SUP=0 HEADSUP=0 ORDSUP=0 SIMPSUP=1"
expect "WU_SUP=0 [CRD_SUP=0] NV_SUP=0 V_SUP=1"
expect "NO_PI_CHK=0 P_I_I_SUP=0 LUICLR=1"
run sh -c "sg_inq -p 0x86 -r $D | od -An -tx1 -v"
expect_rc 0
expect "00 86 00 3c 00 01 01 01 00 00 00 00 00 00 00 00"
[ "$(echo "$OUT" | grep -c '^ 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00$')" -eq 3 ] || fail "VPD 86h: bytes 16-63 not all zero"

# ---- VPD 83h: the target port designator (SPC-4 7.8.6.6), after the two logical unit designators ----
run sg_inq -p 0x83 $D
expect_rc 0
expect "designator_type: Relative target port,  code_set: Binary"
expect "associated with the Target port"
expect "Relative target port: 0x1"
# The descriptor's bytes: code set 1 (binary), PIV 0, association 01b (target port), type 4h; length 4; port 0001h.
run sh -c "sg_inq -p 0x83 -r $D | tail -c 8 | od -An -tx1"
expect_rc 0
expect "01 14 00 04 00 00 00 01"
echo "$P: VPD checks passed"
echo "$P: all checks passed"
