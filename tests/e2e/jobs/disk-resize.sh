#!/bin/sh
# Guest job (busybox sh), run against a disk the host created over RPC: ram:256M. It writes a checksummed
# pattern into the last MiB, prints E2E-RESIZE-READY, and the host then runs `blktarget disk resize d1 384M`.
# The guest must see /sys/block/vda/size grow from 524288 to 786432 sectors by itself (the target sends
# VHOST_USER_BACKEND_CONFIG_CHANGE_MSG, QEMU re-reads the config and interrupts the guest), the old data must
# be intact, and the new space must be writable and read back.
set -eu
dev=${E2E_DEV:-/dev/vda}
name=${dev#/dev/}
fail() { echo "disk-resize: FAIL: $*"; exit 1; }

before=$(cat /sys/block/$name/size)
echo "disk-resize: $dev has $before sectors"
[ "$before" -eq 524288 ] || fail "expected 524288 sectors (256 MiB) before the resize"
head -c 1048576 /dev/urandom > /tmp/old.bin
dd if=/tmp/old.bin of="$dev" bs=1048576 seek=255 oflag=direct conv=fsync 2>/dev/null
old=$(sha256sum < /tmp/old.bin | cut -d' ' -f1)

echo "E2E-RESIZE-READY sectors=$before"
i=0
while [ "$(cat /sys/block/$name/size)" -eq "$before" ]; do
    i=$((i + 1))
    [ $i -le 180 ] || fail "the size did not change within 180 s"
    sleep 1
done
after=$(cat /sys/block/$name/size)
echo "disk-resize: $dev grew to $after sectors after ${i}s without a rescan"
[ "$after" -eq 786432 ] || fail "expected 786432 sectors (384 MiB)"
dmesg | grep -i "new size" | tail -n 1 || true

now=$(dd if="$dev" bs=1048576 skip=255 count=1 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
[ "$now" = "$old" ] || fail "the last MiB before the resize changed"
head -c 4194304 /dev/urandom > /tmp/new.bin
dd if=/tmp/new.bin of="$dev" bs=1048576 seek=380 oflag=direct conv=fsync 2>/dev/null
back=$(dd if="$dev" bs=1048576 skip=380 count=4 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
[ "$back" = "$(sha256sum < /tmp/new.bin | cut -d' ' -f1)" ] || fail "the new space did not read back what was written"
echo "disk-resize: old data intact, 4 MiB written and read back at 380 MiB: OK"
