#!/usr/bin/env bash
# setup-host.sh - install what a fresh Debian 12 machine needs to build kapsel, boot the
# default guest and run the tests. Idempotent and quiet when nothing is missing:
# `apt-get update` runs only when a package has to be installed.
#
# Usage: scripts/setup-host.sh [--kernel-build] [--debian-image] [--io-bench]
#   --kernel-build   also the tools to build the guest and test-bed kernels (guests/build.sh)
#   --debian-image   also debootstrap (the Debian minbase root image)
#   --io-bench       also fio and iperf3 (benches/io.py carries them into the test bed's L1)
# Rust itself comes from rustup (rust-toolchain.toml pins the version); this script only
# checks that cargo is there.
set -euo pipefail

log() { printf 'setup-host: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# runtime + tests: QEMU for the nested test bed, busybox/cpio for its initramfs,
# e2fsprogs for disk images, qemu-utils (qemu-img) for qcow2 interop tests, iproute2 for network tests, python3 for helper scripts
# (and python3-venv for schemathesis, scripts/schemathesis-venv.sh);
# runc/crun (OCI bundles and benchmark peers), debootstrap (Debian container rootfs),
# dnsmasq and nftables (the daemon's managed networks)
pkgs=(qemu-system-x86 qemu-utils busybox-static cpio e2fsprogs iproute2 python3 python3-venv file gzip xz-utils
      util-linux procps ca-certificates build-essential pkg-config
      runc crun debootstrap dnsmasq-base nftables)
for arg in "$@"; do
  case $arg in
    --kernel-build) pkgs+=(linux-source-6.1 flex bison bc libelf-dev libssl-dev kmod) ;;
    --debian-image) pkgs+=(debootstrap) ;;
    --io-bench) pkgs+=(fio iperf3) ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d;s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $arg" ;;
  esac
done

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing packages (${missing[*]}); run as root"
  log "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null || [ -x "$HOME/.cargo/bin/cargo" ] \
  || die "cargo not found: install Rust with rustup (https://rustup.rs); rust-toolchain.toml pins the version"
