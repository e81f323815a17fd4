#!/usr/bin/env bash
# Builds (once) and caches the e2e guest: a Debian kernel plus a base initramfs.
#
# Prints the directory holding the guest on stdout (everything else goes to
# stderr), so callers do:   GUEST_DIR=$(tests/e2e/build-guest.sh)
# That directory contains:
#   kernel              what to pass to QEMU -kernel: the uncompressed vmlinux ELF
#                       (booted via PVH, skips ~5 s of in-guest xz decompression under
#                       TCG) or, if extraction is not possible, the bzImage
#   vmlinuz             the Debian linux-image-*-amd64 bzImage, as shipped
#   initramfs-base.cpio busybox + fio + e2fsprogs + kernel modules + /init, *uncompressed*
#                       (unpacking 38 MB of gzip costs ~4 s per boot under TCG, copying
#                       90 MB of plain cpio ~1 s)
#   kernel-version      e.g. 6.1.0-56-amd64
#
# Cache: ${BLKTARGET_E2E_CACHE:-$HOME/.cache/blktarget-e2e}/guest-<kver>-<hash>/
# The hash covers this script and the versions of the host packages whose files
# are copied in, so editing the script (or a host upgrade) rebuilds; older entries
# are pruned (the newest two are kept).
#
# Environment:
#   BLKTARGET_E2E_CACHE           cache root (see above)
#   BLKTARGET_E2E_KERNEL_VERSION  use this kernel ABI (e.g. 6.1.0-56-amd64) instead of
#                                 resolving it via `apt-cache depends linux-image-amd64`
# Options:
#   --force   rebuild even if a cached guest exists
set -euo pipefail

log() { echo "build-guest: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

force=0
for a in "$@"; do
    case "$a" in
        --force) force=1 ;;
        -h|--help) sed -n '2,22p' "$0" >&2; exit 0 ;;
        *) die "unknown argument: $a" ;;
    esac
done

export PATH="$PATH:/usr/sbin:/sbin"
CACHE_ROOT=${BLKTARGET_E2E_CACHE:-$HOME/.cache/blktarget-e2e}
mkdir -p "$CACHE_ROOT"

# Modules the guest loads, in this order; each one's dependencies (from modules.dep)
# are inserted before it automatically. The crypto "*_generic" modules come first
# because they are *soft* dependencies that modules.dep does not list: ext4/jbd2
# look up the "crc32c" algorithm at mount time, crc-t10dif and crc64-rocksoft (used
# by sd_mod/t10-pi) look up their algorithms at load time, and the guest has no
# working modprobe for the kernel to call back into.
WANTED_MODULES=(
    crc32c_generic crct10dif_generic crc64_rocksoft_generic
    virtio_pci virtio_blk            # vhost-user-blk-pci
    virtio_scsi sd_mod               # vhost-user-scsi-pci
    ext4
)

# sg3_utils tools the SCSI jobs run in the guest. The cache key below hashes this script, so a change to this list
# builds a new guest: a cached one without a tool is never reused.
SG_TOOLS=(sg_persist sg_compare_and_write sg_inq sg_opcodes sg_write_same sg_start sg_turs sg_dd)
for c in apt-get apt-cache dpkg dpkg-query depmod cpio gzip busybox fio mke2fs e2fsck "${SG_TOOLS[@]}" ldd flock sha256sum; do
    command -v "$c" >/dev/null 2>&1 || die "'$c' not found; run tests/e2e/install-deps.sh"
done

# --- resolve the kernel version -------------------------------------------------
resolve_kver() {
    apt-cache depends linux-image-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ { sub(/.*linux-image-/, ""); print; exit }'
}

apt_updated=0
apt_update_once() {
    # Needed on machines whose apt lists are missing or stale (the archive only
    # keeps the newest kernel ABI, so an old list points at a vanished .deb).
    [[ $apt_updated -eq 0 ]] || return 1
    apt_updated=1
    log "running apt-get update"
    apt-get -o DPkg::Lock::Timeout=600 update -q >&2 || return 1
}

KVER=${BLKTARGET_E2E_KERNEL_VERSION:-}
if [[ -z "$KVER" ]]; then
    KVER=$(resolve_kver || true)
    if [[ -z "$KVER" ]]; then
        apt_update_once || true
        KVER=$(resolve_kver || true)
    fi
fi

# Cache key: this script + the host packages whose binaries/libraries we copy.
pkg_versions=$(dpkg-query -W -f='${Package}=${Version}\n' busybox-static fio e2fsprogs libc6 sg3-utils 2>/dev/null || true)
HASH=$( { cat "$0"; echo "$pkg_versions"; } | sha256sum | cut -c1-12)

if [[ -z "$KVER" ]]; then
    # Offline and no apt metadata: reuse any guest built by this same script.
    for d in "$CACHE_ROOT"/guest-*-"$HASH"; do
        if [[ -f "$d/ready" ]]; then
            log "cannot resolve kernel version via apt; reusing cached $d"
            echo "$d"
            exit 0
        fi
    done
    die "cannot resolve the kernel version (apt-cache depends linux-image-amd64 gave nothing)"
fi

OUT="$CACHE_ROOT/guest-$KVER-$HASH"

# Serialize concurrent builds (parallel CI jobs sharing a cache) on one lock.
exec 9>"$CACHE_ROOT/.lock"
flock 9

if [[ $force -eq 0 && -f "$OUT/ready" ]]; then
    log "using cached guest $OUT"
    echo "$OUT"
    exit 0
fi

log "building guest for kernel $KVER into $OUT"
start=$SECONDS
# Work inside the cache root so the final rename is atomic (same filesystem).
WORK=$(mktemp -d "$CACHE_ROOT/tmp.XXXXXX")
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT

# --- kernel ---------------------------------------------------------------------
DEB_DIR="$CACHE_ROOT/debs"
mkdir -p "$DEB_DIR"
deb=$(ls "$DEB_DIR"/linux-image-"$KVER"_*.deb 2>/dev/null | head -n1 || true)
if [[ -z "$deb" ]]; then
    dl() {
        # APT::Sandbox::User=root: we run as root and the download dir is not
        # readable by the _apt user; avoids a scary (harmless) warning.
        (cd "$WORK" && apt-get download -q -o APT::Sandbox::User=root "linux-image-$KVER" >&2)
    }
    if ! dl; then
        # Stale lists point to a version the mirror no longer has: refresh and re-resolve.
        if [[ -z "${BLKTARGET_E2E_KERNEL_VERSION:-}" ]] && apt_update_once; then
            new=$(resolve_kver || true)
            if [[ -n "$new" && "$new" != "$KVER" ]]; then
                log "kernel version changed to $new after apt-get update; restarting"
                rm -rf "$WORK"
                trap - EXIT
                exec 9>&-
                exec "$0" "$@"
            fi
            dl || die "apt-get download linux-image-$KVER failed"
        else
            die "apt-get download linux-image-$KVER failed"
        fi
    fi
    deb=$(ls "$WORK"/linux-image-"$KVER"_*.deb | head -n1)
    # Keep only the newest kernel .deb (~70 MB) so rebuilds after a script edit are offline.
    rm -f "$DEB_DIR"/linux-image-*.deb
    mv "$deb" "$DEB_DIR/"
    deb="$DEB_DIR/$(basename "$deb")"
fi

KROOT="$WORK/kroot"
dpkg -x "$deb" "$KROOT"
[[ -f "$KROOT/boot/vmlinuz-$KVER" ]] || die "no boot/vmlinuz-$KVER in $deb"
# The Debian package ships without modules.dep (it is generated at install time).
depmod -b "$KROOT" "$KVER"
MODDIR="$KROOT/lib/modules/$KVER"

# --- initramfs staging ----------------------------------------------------------
S="$WORK/stage"
mkdir -p "$S"/{bin,sbin,usr/bin,usr/sbin,lib,lib64,etc,proc,sys,dev,tmp,mnt,run,root}

# busybox must be the static build: the guest has no libc for a dynamic one
# (ldd exits non-zero for static executables).
BB=$(command -v busybox)
if ldd "$BB" >/dev/null 2>&1; then
    die "$BB is dynamically linked; install busybox-static"
fi
cp "$BB" "$S/bin/busybox"
# Applet links FIRST: copying a real binary afterwards replaces the link. Doing it
# the other way round would make e.g. `cp mke2fs` write through the sbin/mke2fs ->
# busybox symlink and silently overwrite busybox itself.
while read -r applet; do
    [[ -n "$applet" && "$applet" != bin/busybox ]] || continue
    mkdir -p "$S/$(dirname "$applet")"
    ln -sf /bin/busybox "$S/$applet"
done < <("$BB" --list-full)

# Copies a host binary into the initramfs at $2, plus every library ldd lists at its
# host path (ld.so's default search dirs and the libraries' RUNPATHs then just work).
copy_bin() {
    local src=$1 dst=$2 name lib
    src=$(readlink -f "$src")
    name=$(basename "$dst")
    # Drop busybox applet links of the same name anywhere on the guest PATH so the
    # real tool wins regardless of PATH order.
    for d in bin sbin usr/bin usr/sbin; do
        if [[ -L "$S/$d/$name" ]]; then rm -f "$S/$d/$name"; fi
    done
    mkdir -p "$S/$(dirname "$dst")"
    rm -f "$S/$dst"
    cp "$src" "$S/$dst"
    while read -r lib; do
        [[ -n "$lib" ]] || continue
        if [[ ! -e "$S/$lib" ]]; then
            mkdir -p "$S/$(dirname "$lib")"
            cp -L "$lib" "$S/$lib"
        fi
    done < <(ldd "$src" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
}

copy_bin "$(command -v fio)" usr/bin/fio
copy_bin "$(command -v mke2fs)" sbin/mke2fs
copy_bin "$(command -v e2fsck)" sbin/e2fsck
for t in "${SG_TOOLS[@]}"; do copy_bin "$(command -v "$t")" "usr/bin/$t"; done
for l in mkfs.ext4 mkfs.ext2; do rm -f "$S/sbin/$l"; ln -s mke2fs "$S/sbin/$l"; done
for l in fsck.ext4 fsck.ext2; do rm -f "$S/sbin/$l"; ln -s e2fsck "$S/sbin/$l"; done
[[ -f /etc/mke2fs.conf ]] && cp /etc/mke2fs.conf "$S/etc/mke2fs.conf"
ln -sf /proc/mounts "$S/etc/mtab"   # e2fsck checks whether the device is mounted

# --- kernel modules in dependency order -----------------------------------------
# modules.dep lines:  kernel/x/foo.ko: kernel/y/dep1.ko kernel/z/dep2.ko
# Names are normalized (basename without .ko*, '-' -> '_') as the kernel does.
declare -A MOD_PATH MOD_DEPS
norm() { local b=${1##*/}; b=${b%%.ko*}; echo "${b//-/_}"; }
while IFS= read -r line; do
    p=${line%%:*}
    n=$(norm "$p")
    MOD_PATH[$n]=$p
    deps=""
    for d in ${line#*:}; do deps+="$(norm "$d") "; done
    MOD_DEPS[$n]=$deps
done < "$MODDIR/modules.dep"

declare -A SEEN
ORDER=()
visit() {
    local m=$1 d deps i
    [[ -z "${SEEN[$m]:-}" ]] || return 0
    SEEN[$m]=1
    if [[ -z "${MOD_PATH[$m]:-}" ]]; then
        # Built into the kernel: nothing to load.
        if grep -qE "/${m//_/[-_]}\.ko" "$MODDIR/modules.builtin"; then return 0; fi
        die "kernel module '$m' not found in $KVER"
    fi
    read -ra deps <<< "${MOD_DEPS[$m]}"
    # modprobe loads the list back to front; do the same.
    for (( i=${#deps[@]}-1; i>=0; i-- )); do visit "${deps[i]}"; done
    ORDER+=("$m")
}
for m in "${WANTED_MODULES[@]}"; do visit "$m"; done

mkdir -p "$S/lib/modules"
: > "$S/etc/e2e-modules"
for m in "${ORDER[@]}"; do
    src="$MODDIR/${MOD_PATH[$m]}"
    dst="$S/lib/modules/$m.ko"
    # busybox insmod may not understand compressed modules (newer Debian kernels
    # ship .ko.xz / .ko.zst); decompress here.
    case "$src" in
        *.ko) cp "$src" "$dst" ;;
        *.ko.xz) xz -dc "$src" > "$dst" ;;
        *.ko.zst) zstd -qdc "$src" > "$dst" ;;
        *.ko.gz) gzip -dc "$src" > "$dst" ;;
        *) die "unexpected module file $src" ;;
    esac
    echo "$m.ko" >> "$S/etc/e2e-modules"
done
log "modules (load order): ${ORDER[*]}"

# --- /init ----------------------------------------------------------------------
cat > "$S/init" <<'INIT'
#!/bin/sh
# PID 1 of the e2e guest (generated by tests/e2e/build-guest.sh).
# Mounts the basics, loads the virtio/scsi/ext4 modules, waits for the disk, prints
# device facts, runs /job.sh (from the per-test cpio appended by run-guest.sh) and
# reports its exit status as "E2E-RESULT: rc=N" -- the line run-guest.sh looks for.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t tmpfs tmpfs /tmp
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null   # per-hctx counters for the MQ check

finish() {
    sync
    echo
    echo "E2E-RESULT: rc=$1"
    # -f: no init system to ask, power off right away; QEMU exits (-no-reboot).
    poweroff -f
    sleep 5
    echo o > /proc/sysrq-trigger
}

[ -f /job.env ] && . /job.env
E2E_KIND=${E2E_KIND:-blk}
if [ "$E2E_KIND" = scsi ]; then E2E_DEV=${E2E_DEV:-/dev/sda}; else E2E_DEV=${E2E_DEV:-/dev/vda}; fi
E2E_NAME=${E2E_DEV#/dev/}
export E2E_KIND E2E_DEV E2E_NAME E2E_QUEUES

echo "E2E: guest up, kernel $(uname -r), $(nproc) cpus"
while read -r m; do
    insmod "/lib/modules/$m" || { echo "E2E: insmod $m failed"; finish 90; }
done < /etc/e2e-modules

# virtio-blk creates the disk synchronously during insmod, SCSI scans asynchronously;
# allow up to 30 s either way.
i=0
while [ ! -b "$E2E_DEV" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
if [ ! -b "$E2E_DEV" ]; then
    echo "E2E: $E2E_DEV did not appear; block devices: $(ls /sys/block)"
    dmesg | tail -n 40
    finish 91
fi

# Device facts: cheap and invaluable when a target advertises something odd.
q=/sys/block/$E2E_NAME/queue
rd() { cat "$1" 2>/dev/null || echo "?"; }
serial=$(rd /sys/block/$E2E_NAME/serial)
# SCSI: VPD page 80h is a 4-byte header, then the serial (busybox tr has no [:print:] class).
[ "$serial" = "?" ] && serial=$(tail -c +5 /sys/block/$E2E_NAME/device/vpd_pg80 2>/dev/null | tr -d '\000')
rot=$(rd $q/rotational)
echo "E2E-DEVICE: dev=$E2E_DEV kind=$E2E_KIND size_sectors=$(rd /sys/block/$E2E_NAME/size)" \
     "logical_block_size=$(rd $q/logical_block_size) physical_block_size=$(rd $q/physical_block_size)" \
     "discard_max_bytes=$(rd $q/discard_max_bytes) write_zeroes_max_bytes=$(rd $q/write_zeroes_max_bytes)" \
     "max_hw_sectors_kb=$(rd $q/max_hw_sectors_kb) max_segments=$(rd $q/max_segments) write_cache=$(rd $q/write_cache | tr ' ' _)" \
     "ro=$(rd /sys/block/$E2E_NAME/ro) rotational=$rot hw_queues=$(ls -d /sys/block/$E2E_NAME/mq/*/ 2>/dev/null | wc -l) serial=$serial"

# Note for job scripts: Debian's static busybox runs its own applets in preference
# to PATH (e.g. `mke2fs` is busybox's minimal one); call the real e2fsprogs tools as
# /sbin/mke2fs, /sbin/mkfs.ext4, /sbin/e2fsck.
echo "E2E: running job"
sh /job.sh
finish $?
INIT
chmod 755 "$S/init"

# --- pack -----------------------------------------------------------------------
mkdir -p "$WORK/out"
cp "$KROOT/boot/vmlinuz-$KVER" "$WORK/out/vmlinuz"
echo "$KVER" > "$WORK/out/kernel-version"

# Under TCG the bzImage spends ~5 s decompressing itself. QEMU can boot the plain
# vmlinux ELF directly through its PVH entry point (CONFIG_PVH), so extract it: the
# payload is the first compressed stream inside the bzImage.
extract_vmlinux() {
    local img=$1 out=$2 magic off
    grep -q '^CONFIG_PVH=y' "$KROOT/boot/config-$KVER" || return 1
    for magic in xz zstd gzip; do
        case $magic in
            xz) off=$(grep -abo $'\xfd7zXZ' "$img" | head -n1 | cut -d: -f1 || true) ;;
            zstd) off=$(grep -abo $'\x28\xb5\x2f\xfd' "$img" | head -n1 | cut -d: -f1 || true) ;;
            gzip) off=$(grep -abo $'\x1f\x8b\x08' "$img" | head -n1 | cut -d: -f1 || true) ;;
        esac
        [[ -n "$off" ]] || continue
        case $magic in
            xz) tail -c +"$((off + 1))" "$img" | xz -dc --single-stream > "$out" 2>/dev/null || true ;;
            zstd) tail -c +"$((off + 1))" "$img" | zstd -qdc > "$out" 2>/dev/null || true ;;
            gzip) tail -c +"$((off + 1))" "$img" | gzip -dc > "$out" 2>/dev/null || true ;;
        esac
        # Must be an ELF file ("\x7fELF") of plausible size.
        if [[ "$(head -c 4 "$out" | od -An -c | tr -d ' ')" == '177ELF' && $(stat -c %s "$out") -gt 1000000 ]]; then
            return 0
        fi
    done
    rm -f "$out"
    return 1
}
if LC_ALL=C extract_vmlinux "$WORK/out/vmlinuz" "$WORK/out/vmlinux"; then
    ln -s vmlinux "$WORK/out/kernel"
    log "extracted vmlinux for PVH boot"
else
    ln -s vmlinuz "$WORK/out/kernel"
    log "could not extract vmlinux; guests boot the (slower) bzImage"
fi

# -R 0:0: files owned by root in the guest. No compression (see header). The
# per-test archive appended by run-guest.sh starts at a 4-byte aligned offset as
# the kernel requires, because newc archives are padded to 512 bytes.
(cd "$S" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) > "$WORK/out/initramfs-base.cpio"
date -u +%FT%TZ > "$WORK/out/ready"

rm -rf "$OUT"
mv "$WORK/out" "$OUT"
# Prune guests built from other script versions or kernels, but keep the previous
# one: a concurrently running suite may still be booting from it.
ls -dt "$CACHE_ROOT"/guest-*/ 2>/dev/null | tail -n +3 | while read -r d; do
    d=${d%/}
    [[ "$d" == "$OUT" ]] || rm -rf "$d"
done || true
log "built $OUT in $((SECONDS - start)) s ($(du -sh "$OUT" | cut -f1))"
echo "$OUT"
