#!/bin/sh
# Guest job (busybox sh, --kind scsi) of scsi-pr-two-initiators: SCSI-3 persistent reservations between TWO guests,
# each on its own vhost-user-scsi export of one shared disk (two I_T nexuses of one logical unit). Both VMs run this
# job at the same time, E2E_PR_ROLE=a (verdict scsi-pr-two-initiators) or b (scsi-pr-second-initiator). They
# synchronise through the reservation state itself, every wait bounded:
#   A: registers 0xa0, reserves Write Exclusive, writes, changes its key to 0xa (the reservation stays its own).
#   B: waits for the reservation to show key 0xa; registers 0xb; its write fails (RESERVATION CONFLICT), its read works; PREEMPTs 0xa;
#      writes; sets the COMPARE AND WRITE counter block to 0.
#   A: waits for B's reservation, meeting REGISTRATIONS PREEMPTED (a unit attention) on the way; its key is gone, its
#      write and its COMPARE AND WRITE conflict; registers 0xaa to say so.
#   B: waits for 0xaa, CLEARs (A gets RESERVATIONS PREEMPTED).
#   Both: with no reservation left, race COMPARE AND WRITE increments of one counter block (retrying on MISCOMPARE)
#   and wait until it shows both guests' increments: a lost update would leave it short.
set -eu
ROLE=${E2E_PR_ROLE:?E2E_PR_ROLE must be a or b}
P=scsi-pr-$ROLE
D=/dev/sda
WAIT_S=60          # any wait for the other guest (both boot at once under TCG)
INCREMENTS=16      # COMPARE AND WRITE increments per guest
COUNTER_LBA=8192
fail() { echo "$P: FAIL: $*"; dmesg | tail -n 20 | sed "s/^/$P: dmesg: /"; exit 1; }
[ -b $D ] || fail "no $D"
. /job-lib.sh   # run
has_line() { echo "$OUT" | sed 's/^ *//; s/ *$//' | grep -qxF "$1"; }  # the last output has the line $1 (spaces trimmed)
expect() {  # expect RC LINE...: the last command exited with RC and its output has every LINE
    [ "$RC" -eq "$1" ] || fail "exit status $RC, expected $1"
    shift
    for t in "$@"; do has_line "$t" || fail "expected the line '$t'"; done
}
# dmesg_has COUNT TEXT: the kernel log has COUNT lines containing TEXT (timestamps left out)
dmesg_has() {
    n=$(dmesg | grep -cF "$2" || true)
    [ "$n" -eq "$1" ] || fail "the kernel log has $n line(s) with '$2', expected $1"
    dmesg | grep -F "$2" | sed 's/^\[[^]]*\] //; s/^/'"$P"': kernel: /'
    [ "$n" -ne 0 ] || echo "$P: kernel: no '$2'"
}
# write_conflicts LBA4K: a 4 KiB write at 4 KiB block LBA4K fails with RESERVATION CONFLICT as Linux reports it
write_conflicts() {
    write_block "$1"
    expect 1 "dd: error writing '/dev/sda': Invalid exchange" "0+0 records out"
    dmesg_has "$2" "sd 0:0:0:0: reservation conflict"
    dmesg_has 1 "critical nexus error, dev sda, sector $(($1 * 8)) op 0x1:(WRITE)"
}
now() { cut -d. -f1 /proc/uptime; }
# wait_for LINE CMD...: runs CMD every 0.2 s until its output has LINE, at most WAIT_S seconds; prints each output that
# differs from the one before. Outputs of failed runs (a unit attention) are kept in $ODD.
wait_for() {
    text=$1; shift
    echo "$P: \$ $*   (until it shows '$text')"
    end=$(($(now) + WAIT_S)) last="" ODD=""
    while :; do
        RC=0
        OUT=$("$@" 2>&1) || RC=$?
        if [ "$OUT" != "$last" ]; then
            echo "$OUT" | sed "s/^/$P:   /"
            [ "$RC" -eq 0 ] || { echo "$P:   (exit $RC)"; ODD="$ODD$OUT (exit $RC)
"; }
            last=$OUT
        fi
        has_line "$text" && return 0
        [ "$(now)" -lt "$end" ] || fail "no '$text' within ${WAIT_S}s"
        sleep 0.2
    done
}
write_block() { run dd if=/dev/urandom of=$D bs=4096 count=1 seek=$1 oflag=direct; }

# The counter block: "CAW-COUNTER nnnnnn r" and zeros (r: the role that wrote it).
counter_block() { { printf 'CAW-COUNTER %06d %s\n' "$1" "$2"; head -c 512 /dev/zero; } | head -c 512; }
read_counter() {  # the counter's block into $1; its value on stdout
    dd if=$D of="$1" bs=512 skip=$COUNTER_LBA count=1 iflag=direct 2>/dev/null || fail "reading the counter"
    v=$(head -c 18 "$1" | cut -c13-18 | sed 's/^0*//')
    head -c 12 "$1" | grep -qx 'CAW-COUNTER ' || fail "the counter block is damaged: $(head -c 24 "$1")"
    echo "${v:-0}"
}
race_increments() {
    n=0 retries=0
    while [ $n -lt $INCREMENTS ]; do
        v=$(read_counter /tmp/cur)
        counter_block $((v + 1)) "$ROLE" > /tmp/next
        cat /tmp/cur /tmp/next > /tmp/caw
        rc=0
        sg_compare_and_write --in=/tmp/caw --lba=$COUNTER_LBA --num=1 $D > /tmp/caw.out 2>&1 || rc=$?
        case $rc in
            0) n=$((n + 1)) ;;
            14) retries=$((retries + 1)) ;;   # MISCOMPARE: the other guest got in between; read again
            *) cat /tmp/caw.out; fail "COMPARE AND WRITE of the counter: exit status $rc" ;;
        esac
        [ $retries -lt 1000 ] || fail "1000 miscompares in a row"
    done
    echo "$P: $INCREMENTS COMPARE AND WRITE increments done, $retries retried after a MISCOMPARE"
    end=$(($(now) + WAIT_S))
    while v=$(read_counter /tmp/cur) && [ "$v" -lt $((2 * INCREMENTS)) ]; do
        [ "$(now)" -lt "$end" ] || fail "the counter stays at $v, expected $((2 * INCREMENTS)) (a lost update?)"
        sleep 0.2
    done
    [ "$v" -eq $((2 * INCREMENTS)) ] || fail "the counter is $v, expected $((2 * INCREMENTS))"
    echo "$P: the counter reads $v: no increment of either guest was lost"
}

# Each export of the shared disk is a target port of its own (SPC-4 7.8.6.6): A's export (created first) is relative
# target port 1, B's is 2; READ FULL STATUS reports each registration with its port.
case $ROLE in a) PORT=0x1 ;; *) PORT=0x2 ;; esac
run sg_inq -p 0x83 $D
expect 0 "Relative target port: $PORT"

if [ "$ROLE" = a ]; then
    run sg_persist -n --out --register --param-sark=0xa0 $D
    expect 0
    run sg_persist -n --out --reserve --param-rk=0xa0 --prout-type=1 $D
    expect 0
    run sg_persist -n --in --read-reservation $D
    expect 0 "PR generation=0x1, Reservation follows:" "Key=0xa0" "scope: LU_SCOPE,  type: Write Exclusive"
    write_block 1024
    expect 0 "1+0 records out"
    # The holder changes its key: the reservation stays, now under 0xa (B checks it), which is what B waits for. From
    # here on A only reads until B has PREEMPTed, so the unit attention meets A's next PERSISTENT RESERVE IN.
    run sg_persist -n --out --register --param-rk=0xa0 --param-sark=0xa $D
    expect 0
    echo "$P: holding Write Exclusive with key 0xa; waiting for B to preempt it"
    wait_for "Key=0xb" sg_persist -n --in --read-reservation $D
    expect 0 "PR generation=0x4, Reservation follows:" "Key=0xb" "scope: LU_SCOPE,  type: Write Exclusive"
    # The first command after the PREEMPT got the unit attention (sg_persist exit status 6); Linux logs 2Ah/05h
    # (like every 2Ah without a message of its own) as "Parameters changed".
    OUT=$ODD RC=0
    expect 0 "Fixed format, current; Sense key: Unit Attention" "Additional sense: Registrations preempted" \
        "PR in (Read reservation): Unit attention" "sg_persist failed: Unit attention (exit 6)"
    dmesg_has 1 "sd 0:0:0:0: Parameters changed"
    run sg_persist -n --in --read-keys $D
    expect 0 "PR generation=0x4, 1 registered reservation key follows:" "0xb"
    ! has_line 0xa || fail "key 0xa is still registered after B's PREEMPT"
    write_conflicts 1024 1
    counter_block 0 a > /tmp/zero
    cat /tmp/zero /tmp/zero > /tmp/caw
    run sg_compare_and_write --in=/tmp/caw --lba=$COUNTER_LBA --num=1 $D
    expect 24 "sg_compare_and_write: SCSI COMPARE AND WRITE: Reservation conflict"
    dmesg_has 2 "sd 0:0:0:0: reservation conflict"
    run sg_persist -n --out --register --param-sark=0xaa $D
    expect 0
    echo "$P: registered 0xaa; waiting for B to CLEAR"
    wait_for "PR generation=0x6, there are NO registered reservation keys" sg_persist -n --in --read-keys $D
    OUT=$ODD RC=0
    expect 0 "Fixed format, current; Sense key: Unit Attention" "Additional sense: Reservations preempted" \
        "PR in (Read keys): Unit attention" "sg_persist failed: Unit attention (exit 6)"
    dmesg_has 2 "sd 0:0:0:0: Parameters changed"
    race_increments
else
    wait_for "Key=0xa" sg_persist -n --in --read-reservation $D
    expect 0 "PR generation=0x2, Reservation follows:" "Key=0xa" "scope: LU_SCOPE,  type: Write Exclusive"
    run sg_persist -n --out --register --param-sark=0xb $D
    expect 0
    run sg_persist -n --in --read-keys $D
    expect 0 "PR generation=0x3, 2 registered reservation keys follow:" "0xa" "0xb"
    # Write Exclusive: a registrant that does not hold it may read but not write.
    write_conflicts 2048 1
    run sh -c "dd if=$D bs=4096 count=1 skip=1024 iflag=direct | wc -c"
    expect 0 "1+0 records out" 4096
    run sg_persist -n --out --preempt --param-rk=0xb --param-sark=0xa --prout-type=1 $D
    expect 0
    run sg_persist -n --in --read-reservation $D
    expect 0 "PR generation=0x4, Reservation follows:" "Key=0xb" "scope: LU_SCOPE,  type: Write Exclusive"
    write_block 2048
    expect 0 "1+0 records out"
    counter_block 0 b > /tmp/zero
    run dd if=/tmp/zero of=$D bs=512 seek=$COUNTER_LBA count=1 oflag=direct
    expect 0 "1+0 records out"
    wait_for "0xaa" sg_persist -n --in --read-keys $D
    expect 0 "PR generation=0x5, 2 registered reservation keys follow:" "0xb" "0xaa"
    run sg_persist -n --out --clear --param-rk=0xb $D
    expect 0
    run sg_persist -n --in --read-reservation $D
    expect 0 "PR generation=0x6, there is NO reservation held"
    race_increments
    # PREEMPT and CLEAR sent no unit attention to their own nexus.
    dmesg_has 0 "Parameters changed"
fi
# COMPARE AND WRITE changes no reservation state: generation 6 (REGISTER 0xa0, its change to 0xa, REGISTER 0xb,
# PREEMPT, REGISTER 0xaa, CLEAR).
run sg_persist -n --in --read-keys $D
expect 0 "PR generation=0x6, there are NO registered reservation keys"
echo "$P: all checks passed"
