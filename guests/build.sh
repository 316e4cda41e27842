#!/usr/bin/env bash
# guests/build.sh - build kapsel's Linux test guests and the test-bed host kernel.
#
# Usage:  guests/build.sh [OUT_DIR] [STEP...]
#   OUT_DIR defaults to ${KAPSEL_CACHE:-$HOME/.cache/kapsel}/guest (outside the repo).
#   STEPs (default: all = deps kernel host-kernel initramfs busybox-ext4):
#     deps          install the missing build tools (scripts/setup-host.sh --kernel-build)
#     kernel        L2 guest kernel from Debian's linux-source-6.1 with guests/linux/guest.config
#                   -> OUT/bzImage, OUT/vmlinux, OUT/kernel.config
#     host-kernel   L1 test-bed kernel (KVM + KVM_AMD built in) with guests/linux/host.config
#                   -> OUT/host/bzImage, OUT/host/kernel.config
#     initramfs     busybox-static initramfs, /init = guests/linux/guest-init.sh
#                   -> OUT/initramfs-busybox.cpio.gz
#     busybox-ext4  the same tree as a bare ext4 image -> OUT/rootfs-busybox.ext4
#     debian-ext4   debootstrap --variant=minbase bookworm + fio, iperf3, iproute2 (DEBIAN_INCLUDE)
#                   -> OUT/rootfs-debian.ext4 (not in all)
#
# The layout of OUT is the same as ../shared/guest, so either can serve as the guest
# directory (see scripts/guest-artifacts.sh). Idempotent: a step is skipped when its output
# exists and the hash of its inputs (the config or init script from the repo) is unchanged.
# Outputs are written under a temporary name and renamed, so an interrupted run never leaves
# a half-written artifact. Intermediates (kernel source and objects, staging trees, logs) live
# in OUT/build/. Needs root for the root filesystems (mknod, file ownership in the images).
# Env: JOBS (make -j, default nproc), MIRROR (debootstrap mirror), DEBIAN_SUITE (bookworm).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
LINUX=$HERE/linux
OUT=${KAPSEL_CACHE:-$HOME/.cache/kapsel}/guest
if [ $# -gt 0 ] && [[ $1 == */* || -d $1 ]]; then OUT=$1; shift; fi
mkdir -p "$OUT/host"
OUT=$(cd "$OUT" && pwd)
BUILD=$OUT/build
LOGS=$BUILD/logs
mkdir -p "$LOGS"
JOBS=${JOBS:-$(nproc)}
DEBIAN_SUITE=${DEBIAN_SUITE:-bookworm}
# Extra packages in the Debian image: the I/O benchmarks run inside the guest (ip configures
# its network card: the guest kernel has no IP autoconfiguration).
DEBIAN_INCLUDE=${DEBIAN_INCLUDE:-fio,iperf3,iproute2}
KSRC_TARBALL=/usr/src/linux-source-6.1.tar.xz
RECIPE=1   # bump when a rootfs step's code changes

log() { printf '[guests/build %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# one build per OUT at a time: two makes in one object dir corrupt each other's objects
exec {lockfd}>>"$BUILD/.lock"
if ! flock -n "$lockfd"; then
  log "waiting for another guests/build.sh on $OUT to finish"
  flock "$lockfd"
fi
need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root (mknod, ownership in the image)"; }

# ---------------------------------------------------------------- stamps
hash_of() { cat "$@" | { echo "recipe $RECIPE"; cat; } | sha256sum | cut -c1-16; }
uptodate() { [ -s "$1" ] && [ -f "$1.stamp" ] && [ "$(cat "$1.stamp")" = "$2" ]; }
mark() { echo "$2" > "$1.stamp"; }
# install SRC as DEST atomically (copy to DEST.tmp, rename)
install_atomic() { cp "$1" "$2.tmp" && mv "$2.tmp" "$2"; }

# ---------------------------------------------------------------- steps
step_deps() {
  "$REPO/scripts/setup-host.sh" --kernel-build
  if [ "${WANT_DEBIAN:-0}" = 1 ]; then "$REPO/scripts/setup-host.sh" --debian-image; fi
}

kernel_source() {
  local src=$BUILD/linux-source-6.1
  if [ ! -f "$src/Makefile" ]; then
    [ -f "$KSRC_TARBALL" ] || die "$KSRC_TARBALL missing (scripts/setup-host.sh --kernel-build)"
    log "kernel: extracting $KSRC_TARBALL"
    rm -rf "$src" "$src.tmp"; mkdir -p "$src.tmp"
    tar -xf "$KSRC_TARBALL" -C "$src.tmp" --strip-components=1
    mv "$src.tmp" "$src"
  fi
  echo "$src"
}

# make with a progress line every 30 s (a tiny kernel takes 10-20 min on 2 cores)
make_with_progress() {
  local name=$1 logf=$2; shift 2
  make "$@" >"$logf" 2>&1 &
  local pid=$! t0=$SECONDS
  while kill -0 "$pid" 2>/dev/null; do
    sleep 5
    if [ $(((SECONDS - t0) % 30)) -lt 5 ]; then
      log "$name: building... $((SECONDS - t0))s, $(grep -c '^  CC ' "$logf" || true) files compiled"
    fi
  done
  wait "$pid" || { tail -30 "$logf" >&2; die "$name: build failed (log: $logf)"; }
  log "$name: built in $((SECONDS - t0))s"
}

# build_kernel NAME CONFIG OBJDIR DESTDIR [vmlinux]
build_kernel() {
  local name=$1 config=$2 obj=$3 dest=$4 want_vmlinux=${5:-}
  local key; key=$(hash_of "$config")
  if uptodate "$dest/bzImage" "$key" && { [ -z "$want_vmlinux" ] || [ -s "$dest/vmlinux" ]; }; then
    log "$name: up to date"; return
  fi
  local src; src=$(kernel_source)
  mkdir -p "$obj"
  cp "$config" "$obj/.config"
  make -s -C "$src" O="$obj" ARCH=x86_64 olddefconfig >"$LOGS/$name-kconfig.log" 2>&1 \
    || die "$name: olddefconfig failed (log: $LOGS/$name-kconfig.log)"
  # every option of the repo's config must survive (a different source version may drop some)
  local lost
  lost=$(grep -E '^CONFIG_[A-Z0-9_]+=' "$config" | grep -Ev '^CONFIG_(CC|GCC|CLANG|LD|AS|PAHOLE|RUSTC|BINDGEN)_' \
         | grep -vxFf "$obj/.config" || true)
  if [ -n "$lost" ]; then log "$name: options that did not stick:"; echo "$lost" >&2; fi
  log "$name: make -j$JOBS bzImage (log: $LOGS/$name-build.log)"
  make_with_progress "$name" "$LOGS/$name-build.log" -C "$src" O="$obj" ARCH=x86_64 -j"$JOBS"
  install_atomic "$obj/arch/x86/boot/bzImage" "$dest/bzImage"
  [ -z "$want_vmlinux" ] || install_atomic "$obj/vmlinux" "$dest/vmlinux"
  install_atomic "$obj/.config" "$dest/kernel.config"
  mark "$dest/bzImage" "$key"
  log "$name: $(du -h "$dest/bzImage" | cut -f1) $dest/bzImage"
}

step_kernel() { build_kernel kernel "$LINUX/guest.config" "$BUILD/linux-obj" "$OUT" vmlinux; }
step_host_kernel() { build_kernel host-kernel "$LINUX/host.config" "$BUILD/linux-host-obj" "$OUT/host"; }

# busybox staging tree shared by the initramfs and the busybox ext4 image
make_busybox_tree() {
  local dir=$1 a
  command -v /bin/busybox >/dev/null && file -L /bin/busybox | grep -q 'statically linked' \
    || die "needs a static /bin/busybox (apt-get install busybox-static)"
  rm -rf "$dir"; mkdir -p "$dir"
  mkdir -p "$dir"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root,mnt,var/log}
  chmod 1777 "$dir/tmp"
  cp /bin/busybox "$dir/bin/busybox"
  for a in $(/bin/busybox --list-full); do [ -e "$dir/$a" ] || ln -s /bin/busybox "$dir/$a"; done
  install -m 755 "$LINUX/guest-init.sh" "$dir/sbin/guest-init"
  ln -sf sbin/guest-init "$dir/init"        # initramfs entry point (rdinit=/init)
  ln -sf guest-init "$dir/sbin/init"        # disk-root entry point
  mknod -m 600 "$dir/dev/console" c 5 1
  mknod -m 666 "$dir/dev/null" c 1 3
  echo guest > "$dir/etc/hostname"
  printf 'root:x:0:0:root:/root:/bin/sh\n' > "$dir/etc/passwd"
  printf 'root:x:0:\n' > "$dir/etc/group"
}

step_initramfs() {
  local out=$OUT/initramfs-busybox.cpio.gz key; key=$(hash_of "$LINUX/guest-init.sh" /bin/busybox)
  if uptodate "$out" "$key"; then log "initramfs: up to date"; return; fi
  need_root initramfs
  local dir=$BUILD/busybox-root
  make_busybox_tree "$dir"
  ( cd "$dir" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet ) \
    | gzip -9n > "$out.tmp"
  mv "$out.tmp" "$out"; mark "$out" "$key"
  log "initramfs: $(du -h "$out" | cut -f1) $out"
}

step_busybox_ext4() {
  local out=$OUT/rootfs-busybox.ext4 key; key=$(hash_of "$LINUX/guest-init.sh" /bin/busybox)
  if uptodate "$out" "$key"; then log "busybox-ext4: up to date"; return; fi
  need_root busybox-ext4
  local dir=$BUILD/busybox-root
  make_busybox_tree "$dir"
  rm -f "$out.tmp"; truncate -s 32M "$out.tmp"
  mkfs.ext4 -q -F -L rootfs -d "$dir" "$out.tmp"
  mv "$out.tmp" "$out"; mark "$out" "$key"
  log "busybox-ext4: $out"
}

apt_mirror() {
  if [ -n "${MIRROR:-}" ]; then echo "$MIRROR"; return; fi
  local m
  m=$( { grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{for(i=2;i<=NF;i++) print $i}'
         grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | sed 's/\[[^]]*\]//' | awk '{print $2}'
       } | grep -v -- '-security' | grep -E '/debian/?$' | head -n1 || true)
  echo "${m:-http://deb.debian.org/debian}"
}

step_debian_ext4() {
  local out=$OUT/rootfs-debian.ext4 key; key=$(hash_of "$LINUX/guest-init.sh" <(echo "$DEBIAN_SUITE $DEBIAN_INCLUDE"))
  if uptodate "$out" "$key"; then log "debian-ext4: up to date"; return; fi
  need_root debian-ext4
  command -v debootstrap >/dev/null || "$REPO/scripts/setup-host.sh" --debian-image
  local dir=$BUILD/debian-rootfs ok=$BUILD/debian-rootfs.ok mirror; mirror=$(apt_mirror)
  if [ ! -f "$ok" ] || [ "$(cat "$ok")" != "$DEBIAN_SUITE $DEBIAN_INCLUDE" ]; then
    rm -rf "$dir" "$dir.tmp" "$ok"
    log "debian-ext4: debootstrap --variant=minbase $DEBIAN_SUITE from $mirror (log: $LOGS/debootstrap.log)"
    debootstrap --variant=minbase ${DEBIAN_INCLUDE:+--include="$DEBIAN_INCLUDE"} \
      "$DEBIAN_SUITE" "$dir.tmp" "$mirror" >"$LOGS/debootstrap.log" 2>&1 \
      || { tail -20 "$LOGS/debootstrap.log" >&2; die "debootstrap failed"; }
    mv "$dir.tmp" "$dir"; echo "$DEBIAN_SUITE $DEBIAN_INCLUDE" > "$ok"
  fi
  install -m 755 "$LINUX/guest-init.sh" "$dir/sbin/guest-init"
  [ -e "$dir/sbin/init" ] || [ -L "$dir/sbin/init" ] || ln -s guest-init "$dir/sbin/init"
  echo guest > "$dir/etc/hostname"
  printf '/dev/vda / ext4 defaults 0 1\n' > "$dir/etc/fstab"
  rm -f "$dir"/var/cache/apt/archives/*.deb "$dir"/var/cache/apt/*.bin
  local used_mb size_mb
  used_mb=$(du -sm "$dir" | cut -f1)
  size_mb=$(( (used_mb * 5 / 4 + 64 + 63) / 64 * 64 ))   # used + 25% + 64 MiB, 64 MiB steps
  rm -f "$out.tmp"; truncate -s "${size_mb}M" "$out.tmp"
  mkfs.ext4 -q -F -L rootfs -d "$dir" "$out.tmp"
  mv "$out.tmp" "$out"; mark "$out" "$key"
  log "debian-ext4: ${size_mb} MiB $out"
}

# ---------------------------------------------------------------- main
steps=("$@"); [ ${#steps[@]} -gt 0 ] || steps=(all)
for s in "${steps[@]}"; do
  case $s in
    all) step_deps; step_initramfs; step_busybox_ext4; step_kernel; step_host_kernel ;;
    deps) step_deps ;;
    kernel) step_kernel ;;
    host-kernel) step_host_kernel ;;
    initramfs) step_initramfs ;;
    busybox-ext4) step_busybox_ext4 ;;
    debian-ext4) step_debian_ext4 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d;s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown step $s (see --help)" ;;
  esac
done
log "done: $OUT"
