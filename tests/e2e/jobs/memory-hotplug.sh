#!/bin/sh
# Guest job of memory-hotplug: the host hot-plugs a 256 MiB pc-dimm (memory-backend-memfd, share=on) into NUMA node 1
# (memoryless at boot) after E2E-MEMHP-ADD; QEMU hands it to the target with ADD_MEM_REG. The job onlines the new
# blocks as movable, runs fio 64k randwrite + crc32c verify with its I/O buffers bound to node 1 (numa_mem_policy), so
# the target reads and writes guest memory that did not exist at boot, then asks for the DIMM to go (E2E-MEMHP-REMOVE:
# device_del, the guest offlines and ejects it, QEMU sends REM_MEM_REG) and verifies once more in the memory left.
set -eu
dev=${E2E_DEV:-/dev/vda}
mem=/sys/devices/system/memory
node1=/sys/devices/system/node/node1
node1_kb() { [ -f "$node1/meminfo" ] && awk '/MemTotal/ {print $4}' "$node1/meminfo" || echo 0; }
blocks() { ls -d "$mem"/memory* | wc -l; }
before=$(blocks)
echo "memory-hotplug: $before memory blocks, node1 $(node1_kb) kB"
# Waits up to 120 s until the number of memory blocks compares to the boot count with test operator $1; fails with $2.
await_blocks() {
    i=0
    until [ "$(blocks)" "$1" "$before" ]; do
        i=$((i + 1)); [ $i -le 240 ] || { echo "memory-hotplug: FAIL: $2"; exit 1; }
        sleep 0.5
    done
}
echo "E2E-MEMHP-ADD"
await_blocks -gt "no memory block appeared"
for m in "$mem"/memory*; do
    [ "$(cat "$m/state")" = online ] || echo online_movable > "$m/state"
done
kb=$(node1_kb)
echo "memory-hotplug: $(blocks) memory blocks, node1 $kb kB online"
[ "$kb" -gt 0 ] || { echo "memory-hotplug: FAIL: node 1 has no memory"; exit 1; }
verify() {
    fio --name="$1" --filename="$dev" --direct=1 --ioengine=libaio --rw=randwrite --bs=64k --iodepth=16 --size=64M \
        --offset="$2" --verify=crc32c --verify_fatal=1 --do_verify=1 --eta=never $3 --output=/tmp/fio.out \
        || { cat /tmp/fio.out; echo "memory-hotplug: FAIL: fio $1"; exit 1; }
    grep -q "err= 0" /tmp/fio.out || { cat /tmp/fio.out; echo "memory-hotplug: FAIL: fio $1 reported an error"; exit 1; }
}
verify in-new-memory 0 --numa_mem_policy=bind:1
echo "memory-hotplug: fio verify with buffers bound to node 1 (hot-plugged): ok, node1 $(awk '/MemUsed/ {print $4}' "$node1/meminfo") kB used"
echo "E2E-MEMHP-REMOVE"
await_blocks -le "the DIMM's memory blocks did not go away"
echo "memory-hotplug: DIMM removed, $(blocks) memory blocks, node1 $(node1_kb) kB"
verify after-remove 64M ""
echo "memory-hotplug: fio verify after the removal: ok"
