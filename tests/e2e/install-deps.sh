#!/usr/bin/env bash
# Installs the host packages the tests need (Debian 12, run as root): the e2e suite's, and the tools some
# unit and integration tests call (zstd, qemu-storage-daemon, losetup).
#
# Idempotent and fast: if every package is already installed we never touch apt
# (no "apt-get update", no dpkg lock), so calling this from every CI run costs
# well under a second on a prepared machine.
#
# Usage: tests/e2e/install-deps.sh [--check]
#   --check   only report what is missing; exit 1 if anything is.
set -euo pipefail

# Packages, with a command each one provides so a quick `command -v` check can
# confirm the install actually produced something usable.
#   qemu-system-x86  qemu-system-x86_64, and (via qemu-system-common) qemu-storage-daemon
#   qemu-utils       qemu-img (handy for image backends in later tests)
#   fio              the guest-side I/O verifier (its binary and libraries are copied into the guest)
#   busybox-static   the guest userland; must be the *static* build, the initramfs has no libc for it
#   kmod             depmod, to generate modules.dep for the downloaded kernel
#   cpio             builds the initramfs archives
#   e2fsprogs        mke2fs / e2fsck copied into the guest
#   gzip             compresses the initramfs
#   zstd             the zstd tool the unit tests check our export streams with (export/import itself
#                    uses ZstdSharp, a managed port, and needs no native libzstd)
#   sg3-utils        sg_persist, sg_compare_and_write, sg_inq: copied into the guest for the SCSI job (scsi-pr)
#   socat            talks QMP over a Unix socket to the QEMU processes of the live-migration test
#   mount            losetup, mount, umount: the storage tests export real (loop) block devices; not in every
#                    minimal image (Debian priority "required", not essential)
#   ceph-mon ceph-osd ceph-common
#                    the throwaway cluster the rbd tests start (tests/ceph/start-cluster.sh), and the rbd tool;
#                    librbd1/librados2 come with them (BlkTarget loads librbd.so.1)
#   qemu-block-extra qemu-storage-daemon's rbd driver, the peer of the rbd comparison
#   libnbd0          libnbd.so.0, which the nbd backend loads (qemu-utils' qemu-nbd is the server its tests run)
#   nbdkit           the second NBD server of the nbd tests (memory plugin: multi-conn; eval plugin: a server
#                    without trim/zero/flush)
PACKAGES=(qemu-system-x86 qemu-utils fio busybox-static kmod cpio e2fsprogs gzip zstd mount sg3-utils ceph-mon ceph-osd ceph-common qemu-block-extra socat libnbd0 nbdkit)
COMMANDS=(qemu-system-x86_64 qemu-storage-daemon qemu-img qemu-nbd nbdkit fio busybox depmod cpio mke2fs e2fsck gzip zstd timeout flock losetup mount umount sg_persist ceph-mon ceph-osd ceph rbd socat)

check_only=0
case "${1:-}" in
    --check) check_only=1 ;;
    "") ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "install-deps: unknown argument: $1" >&2; exit 2 ;;
esac

# dpkg-query prints "ii " for a correctly installed package; anything else
# (not installed, half-configured, removed-with-config) counts as missing.
missing_pkgs=()
for p in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
    if [[ "$status" != "ii "* ]]; then
        missing_pkgs+=("$p")
    fi
done

missing_cmds=()
for c in "${COMMANDS[@]}"; do
    # sbin is not always on a CI user's PATH (depmod, mke2fs live there).
    if ! PATH="$PATH:/usr/sbin:/sbin" command -v "$c" >/dev/null 2>&1; then
        missing_cmds+=("$c")
    fi
done

if [[ ${#missing_pkgs[@]} -eq 0 && ${#missing_cmds[@]} -eq 0 ]]; then
    echo "install-deps: all e2e dependencies present"
    exit 0
fi

echo "install-deps: missing packages: ${missing_pkgs[*]:-(none)}; missing commands: ${missing_cmds[*]:-(none)}"
if [[ $check_only -eq 1 ]]; then
    exit 1
fi

if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: must run as root to install packages" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Another apt/dpkg run (e.g. a machine-provisioning step still in progress) may hold
# the dpkg lock; wait for it instead of failing immediately.
APT_OPTS=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)

apt-get "${APT_OPTS[@]}" update -q
# --no-install-recommends: qemu-system-x86 recommends a GUI stack we never use
# (-display none); skipping it saves a lot of CI time. A missing command whose
# package is already installed (should not happen) is fixed by reinstalling all.
apt-get "${APT_OPTS[@]}" install -y -q --no-install-recommends "${PACKAGES[@]}"

still_missing=()
for c in "${COMMANDS[@]}"; do
    PATH="$PATH:/usr/sbin:/sbin" command -v "$c" >/dev/null 2>&1 || still_missing+=("$c")
done
if [[ ${#still_missing[@]} -ne 0 ]]; then
    echo "install-deps: still missing after install: ${still_missing[*]}" >&2
    exit 1
fi
echo "install-deps: done"
