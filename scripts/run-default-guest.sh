#!/usr/bin/env bash
# run-default-guest.sh - THE main job: build kapsel, get the Linux guest, boot it.
#
# Usage: scripts/run-default-guest.sh [--shell] [--direct | --testbed] [--cpus N] [--memory SIZE]
#                                     [--cmdline-extra 'ARGS']
#   --shell     leave a shell in the guest (guest.exit=shell) instead of ending after its report
#   --direct    boot with this machine's /dev/kvm      --testbed  boot inside the nested test bed
#   (default: --direct when /dev/kvm can run Linux, else --testbed; the choice is printed)
#
# Direct:   kapsel run --kernel bzImage --initrd initramfs-busybox.cpio.gz --cmdline '…'
#           with the guest's serial console on this terminal.
# Test bed: the same command inside L1 (scripts/testbed.sh): for machines whose /dev/kvm is
#           kvm_pvm (software nested virtualization: small guests run, a Linux kernel does not)
#           or that have no VMX/SVM at all. Slower (TCG), but the same kapsel on a real KVM.
# Exit status: kapsel's (0 when the guest powered off or rebooted).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
say() { printf 'run-default-guest: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }
if [ -f "$HOME/.cargo/env" ] && ! command -v cargo >/dev/null; then . "$HOME/.cargo/env"; fi

MODE="" SHELL_EXIT=0 CPUS=2 MEMORY=512M EXTRA=""
while [ $# -gt 0 ]; do
  case $1 in
    --shell) SHELL_EXIT=1 ;;
    --direct) MODE=direct ;;
    --testbed) MODE=testbed ;;
    --cpus) CPUS=${2:?--cpus N}; shift ;;
    --memory) MEMORY=${2:?--memory SIZE}; shift ;;
    --cmdline-extra) EXTRA=${2:?--cmdline-extra ARGS}; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d;s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done

scripts/setup-host.sh

say "building kapsel (release, static)"
TARGET=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" cargo build --release --quiet --target "$TARGET" \
  -p kapsel --target-dir "$REPO/target/static"
KAPSEL=$REPO/target/static/$TARGET/release/kapsel

G=$(scripts/guest-artifacts.sh)
say "guest: $G"

CMDLINE="console=ttyS0 reboot=k panic=-1 rdinit=/init"
[ "$SHELL_EXIT" = 1 ] && CMDLINE="$CMDLINE guest.exit=shell"
[ -n "$EXTRA" ] && CMDLINE="$CMDLINE $EXTRA"

# Can this machine's /dev/kvm run a Linux kernel?
why=""
if [ ! -c /dev/kvm ]; then why="there is no /dev/kvm"
elif [ -d /sys/module/kvm_pvm ]; then
  why="/dev/kvm is kvm_pvm (software nested virtualization: a Linux kernel crawls and stops on emulation failures)"
elif ! grep -qwE 'vmx|svm' /proc/cpuinfo; then why="the CPU shows no VMX/SVM"
fi
if [ -z "$MODE" ]; then
  if [ -n "$why" ]; then MODE=testbed; else MODE=direct; fi
fi

args=(--kernel bzImage --initrd initramfs.cpio.gz --cmdline "$CMDLINE" --cpus "$CPUS" --memory "$MEMORY")
if [ "$MODE" = direct ]; then
  [ -z "$why" ] || say "warning: --direct although $why"
  say "booting DIRECTLY on this machine's KVM:"
  say "  kapsel run --kernel $G/bzImage --initrd $G/initramfs-busybox.cpio.gz --cmdline '$CMDLINE' --cpus $CPUS --memory $MEMORY"
  exec "$KAPSEL" run --kernel "$G/bzImage" --initrd "$G/initramfs-busybox.cpio.gz" \
    --cmdline "$CMDLINE" --cpus "$CPUS" --memory "$MEMORY"
fi

say "booting INSIDE THE TEST BED${why:+, because $why}:"
say "  this machine --QEMU TCG--> L1 Linux with kvm_amd --> kapsel run ${args[*]}"
scenario=$(mktemp /tmp/kapsel-default-guest.XXXXXX)
trap 'rm -f "$scenario"' EXIT
{
  printf 'echo "L1: kapsel run %s"\n' "${args[*]}"
  printf 'kapsel run'; printf ' %q' "${args[@]}"; printf '\n'
  printf 'rc=$?; echo "L1: kapsel exit=$rc"; exit $rc\n'
} > "$scenario"
tb=(-b "$KAPSEL" -f "$G/bzImage:bzImage" -f "$G/initramfs-busybox.cpio.gz:initramfs.cpio.gz"
    -s "$scenario" -p 2 -r 2G -t "${KAPSEL_TESTBED_TIMEOUT:-900}")
[ "$SHELL_EXIT" = 1 ] && tb+=(-i)
# the script must outlive testbed.sh's exit code: no exec (the trap removes the scenario)
rc=0; scripts/testbed.sh "${tb[@]}" || rc=$?
exit $rc
