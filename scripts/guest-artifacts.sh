#!/usr/bin/env bash
# guest-artifacts.sh - print the directory that holds the Linux test guests.
#
# Layout (both sources): bzImage, vmlinux, kernel.config, initramfs-busybox.cpio.gz,
# rootfs-busybox.ext4, host/bzImage, host/kernel.config.
#
#  1. ../shared/guest (next to the repo) when it exists and its kernel.config and
#     host/kernel.config equal the repo's guests/linux/guest.config and host.config:
#     nothing is built.
#  2. otherwise guests/build.sh builds everything into
#     ${KAPSEL_CACHE:-$HOME/.cache/kapsel}/guest (idempotent; progress on stderr).
#
# Only the directory goes to stdout. Env: KAPSEL_SHARED_GUEST overrides the shared path;
# KAPSEL_GUEST_SOURCE=build skips the shared directory.
#
#   scripts/guest-artifacts.sh --debian-image
# instead prints the path of rootfs-debian.ext4 (Debian bookworm minbase + fio + iperf3, its
# init guests/linux/guest-init.sh; for root=/dev/vda boots and the I/O benchmarks), built by
# `guests/build.sh debian-ext4` into ${KAPSEL_CACHE:-$HOME/.cache/kapsel}/guest once and cached
# there (debootstrap from the apt mirror: 2-6 min the first time on 2 cores, then nothing).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LINUX=$REPO/guests/linux
log() { printf 'guest-artifacts: %s\n' "$*" >&2; }

if [ "${1:-}" = --debian-image ]; then
  out=${KAPSEL_CACHE:-$HOME/.cache/kapsel}/guest
  "$REPO/guests/build.sh" "$out" debian-ext4 >&2
  [ -s "$out/rootfs-debian.ext4" ] || { log "ERROR: no $out/rootfs-debian.ext4 after guests/build.sh"; exit 1; }
  echo "$(cd "$out" && pwd)/rootfs-debian.ext4"
  exit 0
fi
[ $# = 0 ] || { log "ERROR: unknown argument $1 (none, or --debian-image)"; exit 2; }

ARTIFACTS=(bzImage vmlinux initramfs-busybox.cpio.gz rootfs-busybox.ext4 host/bzImage)

complete() {
  local d=$1 f
  for f in "${ARTIFACTS[@]}"; do [ -s "$d/$f" ] || return 1; done
}

shared=${KAPSEL_SHARED_GUEST:-$REPO/../shared/guest}
if [ "${KAPSEL_GUEST_SOURCE:-auto}" != build ] && [ -d "$shared" ]; then
  shared=$(cd "$shared" && pwd)
  if ! cmp -s "$shared/kernel.config" "$LINUX/guest.config"; then
    log "$shared/kernel.config differs from guests/linux/guest.config: building our own"
  elif ! cmp -s "$shared/host/kernel.config" "$LINUX/host.config"; then
    log "$shared/host/kernel.config differs from guests/linux/host.config: building our own"
  elif ! complete "$shared"; then
    log "$shared lacks some artifacts: building our own"
  else
    echo "$shared"
    exit 0
  fi
fi

out=${KAPSEL_CACHE:-$HOME/.cache/kapsel}/guest
"$REPO/guests/build.sh" "$out" all >&2
complete "$out" || { log "ERROR: $out is incomplete after guests/build.sh"; exit 1; }
(cd "$out" && pwd)
