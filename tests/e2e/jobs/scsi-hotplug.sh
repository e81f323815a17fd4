#!/bin/sh
# Guest job (busybox sh) for a vhost-user-scsi export the host created over RPC with one LUN (0:0, ram 64M). The
# host hot-adds LUN 0:1 (ram 128M) after E2E-HOTPLUG-ADD and removes it after E2E-HOTPLUG-REMOVE. The guest must see
# the new disk appear and go away on its own (VIRTIO_SCSI_T_TRANSPORT_RESET events: no manual rescan), and the new
# LUN must take I/O in between.
set -eu
fail() { echo "scsi-hotplug: FAIL: $*"; exit 1; }
disks() { ls /sys/class/scsi_disk 2>/dev/null | tr '\n' ' '; }

echo "scsi-hotplug: disks before: $(disks)"
[ -e /sys/class/scsi_disk/0:0:0:0 ] || fail "LUN 0:0 is missing at boot"
[ ! -e /sys/class/scsi_disk/0:0:0:1 ] || fail "LUN 0:1 exists before it was added"
echo "E2E-HOTPLUG-ADD"
i=0
while [ ! -e /sys/class/scsi_disk/0:0:0:1/device/block ]; do
    i=$((i + 1)); [ $i -le 120 ] || fail "LUN 0:1 did not appear within 120 s"; sleep 1
done
dev=/dev/$(ls /sys/class/scsi_disk/0:0:0:1/device/block)
i=0
while [ ! -b "$dev" ]; do i=$((i + 1)); [ $i -le 30 ] || fail "$dev has no device node"; sleep 1; done
size=$(cat /sys/class/scsi_disk/0:0:0:1/device/block/*/size)
echo "scsi-hotplug: LUN 0:1 appeared as $dev with $size sectors; disks now: $(disks)"
[ "$size" -eq 262144 ] || fail "expected 262144 sectors (128 MiB)"
head -c 1048576 /dev/urandom > /tmp/p.bin
dd if=/tmp/p.bin of="$dev" bs=1048576 seek=100 oflag=direct conv=fsync 2>/dev/null
back=$(dd if="$dev" bs=1048576 skip=100 count=1 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
[ "$back" = "$(sha256sum < /tmp/p.bin | cut -d' ' -f1)" ] || fail "$dev did not read back what was written"
echo "scsi-hotplug: 1 MiB written to and read back from $dev: OK"
echo "E2E-HOTPLUG-REMOVE"
i=0
while [ -e /sys/class/scsi_disk/0:0:0:1 ]; do
    i=$((i + 1)); [ $i -le 120 ] || fail "LUN 0:1 did not go away within 120 s"; sleep 1
done
echo "scsi-hotplug: LUN 0:1 is gone; disks now: $(disks)"
[ -e /sys/class/scsi_disk/0:0:0:0 ] || fail "LUN 0:0 went away too"
dd if=/dev/sda of=/dev/null bs=1048576 count=4 iflag=direct 2>/dev/null || fail "LUN 0:0 stopped working"
echo "scsi-hotplug: OK"
