#!/usr/bin/env bash
# testbed.sh - run a scenario inside an emulated hardware-KVM host (the kapsel test bed):
#
#   this machine --QEMU TCG, -cpu max (AMD SVM + NPT emulated)--> L1 Linux with kvm_amd
#                                                                   `--> kapsel --> L2 guest
#
# For machines whose own /dev/kvm cannot run a real Linux guest (kvm_pvm). L1 runs stock
# kvm + kvm_amd on TCG's emulation of SVM, so kapsel talks to an unmodified KVM as on metal.
# It builds nothing: the L1 kernel defaults to host/bzImage of scripts/guest-artifacts.sh.
#
# Usage:
#   scripts/testbed.sh [-k L1_KERNEL] [-m 'MOD.ko [params]']... [-b BIN]... [-f SRC[:DEST]]...
#                      -s SCRIPT [-p L1_VCPUS] [-r L1_MEM] [-c QEMU_CPU] [-t TIMEOUT] [-o LOG]
#                      [-w WORKDIR] [-a 'EXTRA L1 CMDLINE'] [-q QEMU_BINARY] [-i]
#
#   -k  L1 kernel with KVM + KVM_AMD, 8250 console and initramfs support
#       (default: host/bzImage from scripts/guest-artifacts.sh)
#   -m  module to insmod in L1 before the scenario, in order, params after a space
#   -b  executable copied to L1:/bin with the shared libraries ldd reports (none if static)
#   -f  file copied into L1: /scenario/BASENAME, or DEST (relative DEST -> /scenario/DEST)
#   -s  busybox sh script run in L1 as /scenario/run.sh, cwd /scenario, once /dev/kvm exists;
#       its output (and the L2 console of a VMM whose serial is on stdout) comes back here
#   -p  L1 vCPUs (default 2)        -r  L1 memory (default 2G; give L1 more than L2 needs)
#   -c  QEMU -cpu model (default max)          -t  wall-clock timeout in seconds (default 900)
#   -o  also write the L1 console log here     -w  work dir (default: temp dir, removed at exit)
#   -a  extra L1 kernel command line           -q  QEMU binary (default qemu-system-x86_64)
#   -i  interactive: this terminal's input reaches the scenario's stdin (default /dev/null)
#
# Exit status: the scenario's; 124 timeout; 125 no /dev/kvm in L1; 126 L1 never reached its
# init; 2 bad usage. Lines "NESTED: ..." are the harness's markers; the last line is
#   NESTED-RESULT: rc=N l1_init=..s kvm_ready=..s script=..s total=..s   (host wall times)
# Known quirk: a run can hang at the very end (rare); callers treat 124 as retry-once.
# Runs on one machine are serialised with flock on /tmp/kapsel-testbed.lock (TESTBED_LOCK
# names another file, TESTBED_NO_LOCK=1 disables it); the timeout starts after the wait.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
QEMU=qemu-system-x86_64
ACCEL=${NESTED_TCG_ACCEL:-tcg,thread=multi}   # thread=single with 2 L1 vCPUs stalls L2
KERNEL="" SCRIPT="" CPU=max VCPUS=2 MEM=2G TIMEOUT=900 LOG="" WORK="" EXTRA="" INTERACTIVE=0
MODS=() BINS=() FILES=()
die() { echo "testbed: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d;s/^# \{0,1\}//'; exit 2; }
while getopts "k:m:b:f:s:p:r:c:t:o:w:a:q:ih" o; do
  case $o in
    k) KERNEL=$OPTARG ;;  m) MODS+=("$OPTARG") ;;  b) BINS+=("$OPTARG") ;;  f) FILES+=("$OPTARG") ;;
    s) SCRIPT=$OPTARG ;;  p) VCPUS=$OPTARG ;;      r) MEM=$OPTARG ;;       c) CPU=$OPTARG ;;
    t) TIMEOUT=$OPTARG ;; o) LOG=$OPTARG ;;        w) WORK=$OPTARG ;;      a) EXTRA=$OPTARG ;;
    q) QEMU=$OPTARG ;;    i) INTERACTIVE=1 ;;
    *) usage ;;
  esac
done
[ $OPTIND -gt $# ] || die "unexpected argument ${!OPTIND} (see -h)"
[ -n "$SCRIPT" ] && [ -f "$SCRIPT" ] || die "-s SCRIPT missing"
if [ -z "$KERNEL" ]; then KERNEL=$("$REPO/scripts/guest-artifacts.sh")/host/bzImage; fi
[ -f "$KERNEL" ] || die "L1 kernel $KERNEL not found"
command -v "$QEMU" >/dev/null || die "$QEMU not found (scripts/setup-host.sh)"
[ -x /bin/busybox ] && file -L /bin/busybox | grep -q 'statically linked' \
  || die "needs a static /bin/busybox (scripts/setup-host.sh)"
command -v cpio >/dev/null || die "needs cpio (scripts/setup-host.sh)"

if [ -z "$WORK" ]; then WORK=$(mktemp -d /tmp/kapsel-testbed.XXXXXX); trap 'rm -rf "$WORK"' EXIT; fi
mkdir -p "$WORK"; WORK=$(cd "$WORK" && pwd)
R=$WORK/root; rm -rf "$R"
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,lib,lib64,proc,sys,dev,tmp,run,scenario,mods}

# ---- L1 root: busybox, binaries + their libraries, modules, files, scenario, init
cp /bin/busybox "$R/bin/busybox"
for a in $(/bin/busybox --list-full); do [ -e "$R/$a" ] || ln -s /bin/busybox "$R/$a"; done
copy_lib() { [ -e "$R$1" ] && return; mkdir -p "$R$(dirname "$1")"; cp -L "$1" "$R$1"; }
for b in "${BINS[@]}"; do
  [ -f "$b" ] || die "binary $b not found"
  install -m 755 "$b" "$R/bin/$(basename "$b")"
  while read -r lib; do copy_lib "$lib"; done < <(ldd "$b" 2>/dev/null | grep -o '/[^ ]*' | sort -u)
done
modlist="" i=0
for m in "${MODS[@]}"; do
  read -r f params <<<"$m"
  [ -f "$f" ] || die "module $f not found"
  i=$((i + 1)); n=$(printf '%02d-%s' $i "$(basename "$f")")
  cp "$f" "$R/mods/$n"; modlist="$modlist/mods/$n ${params:-};"
done
printf '%s\n' "$modlist" > "$R/mods/list"
for f in "${FILES[@]}"; do
  src=${f%%:*}; dst=$(basename "$src"); [ "$src" != "$f" ] && dst=${f#*:}
  case $dst in /*) ;; *) dst=/scenario/$dst ;; esac
  [ -f "$src" ] || die "file $src not found"
  mkdir -p "$R$(dirname "$dst")"; cp --sparse=always "$src" "$R$dst"
done
install -m 755 "$SCRIPT" "$R/scenario/run.sh"
echo "$INTERACTIVE" > "$R/scenario/.interactive"
cat > "$R/init" <<'EOF'
#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run; hostname l1host; ip link set lo up 2>/dev/null
up() { cut -d' ' -f1 /proc/uptime; }
echo "NESTED: L1 init uptime=$(up)s cpus=$(grep -c ^processor /proc/cpuinfo) kernel=$(uname -r) mem=$(sed -n 's/^MemTotal: *//p' /proc/meminfo)"
echo "NESTED: L1 cpu flags: $(grep -m1 ^flags /proc/cpuinfo | tr ' ' '\n' | grep -xE 'svm|npt|nrip_save|vmcb_clean|flushbyasid|decodeassists|x2apic|hypervisor' | tr '\n' ' ')"
IFS=';'; for m in $(cat /mods/list); do
  IFS=' '; set -- $m; [ -n "$1" ] || continue; f=$1; shift
  insmod "$f" "$@" || echo "NESTED: insmod $f $* FAILED"
done; IFS=' '
for p in /sys/module/kvm_amd/parameters/npt /sys/module/kvm_amd/parameters/nested; do
  [ -e $p ] && echo "NESTED: ${p#/sys/module/} = $(cat $p)"
done
if [ -c /dev/kvm ]; then
  echo "NESTED: kvm ready uptime=$(up)s"
  cd /scenario; t0=$(up)
  if [ "$(cat /scenario/.interactive)" = 1 ]; then sh /scenario/run.sh; else sh /scenario/run.sh </dev/null; fi
  rc=$?
  echo "NESTED: script rc=$rc uptime=$(up)s script_l1_seconds=$(awk -v a=$t0 -v b=$(up) 'BEGIN{printf "%.2f", b-a}')"
else
  echo "NESTED: no /dev/kvm"; dmesg | grep -iE 'kvm|svm' | sed 's/^/NESTED: dmesg: /'; rc=125
fi
echo "NESTED: done rc=$rc"
sync; echo o > /proc/sysrq-trigger; poweroff -f
EOF
chmod 755 "$R/init"
( cd "$R" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet ) > "$WORK/l1-initramfs.cpio"

# ---- one test bed at a time on this machine: TCG wants every core, and parallel runs make
# timings meaningless and time-outs likely. TESTBED_NO_LOCK=1 opts out.
if [ "${TESTBED_NO_LOCK:-0}" != 1 ] && command -v flock >/dev/null; then
  exec {lockfd}>>"${TESTBED_LOCK:-/tmp/kapsel-testbed.lock}"
  if ! flock -n "$lockfd"; then
    echo "NESTED: waiting for another test-bed run to finish (lock ${TESTBED_LOCK:-/tmp/kapsel-testbed.lock})"
    flock "$lockfd"
  fi
fi

# ---- boot L1 under TCG and follow its console
append="console=ttyS0 panic=-1 reboot=t rdinit=/init mitigations=off $EXTRA"
t0=$EPOCHREALTIME t_init="" t_kvm="" t_done="" rc=""
out=${LOG:-/dev/null}; : > "$out"
echo "NESTED: host: $QEMU -M q35 -accel $ACCEL -cpu $CPU -smp $VCPUS -m $MEM (L1 initramfs $(du -h "$WORK/l1-initramfs.cpio" | cut -f1))"
# interactive: QEMU reads this terminal, so it must stay in the foreground process group
# (plain `timeout` moves it to its own group, where touching the tty stops it with SIGTTOU)
qemu_stdin=/dev/null tmo=(timeout -k 10)
[ "$INTERACTIVE" = 1 ] && qemu_stdin=/dev/stdin tmo=(timeout --foreground -k 10)
exec {qfd}< <("${tmo[@]}" "$TIMEOUT" "$QEMU" -M q35 -accel "$ACCEL" -cpu "$CPU" -smp "$VCPUS" -m "$MEM" \
               -nodefaults -no-user-config -display none -serial stdio -no-reboot -pidfile "$WORK/qemu.pid" \
               -kernel "$KERNEL" -initrd "$WORK/l1-initramfs.cpio" -append "$append" <"$qemu_stdin" 2>&1
             echo "NESTED: qemu exit=$?")
# GRACE: seconds QEMU may take to exit after the scenario finished before it is killed
# (the known rare hang at power-off would otherwise cost the whole timeout)
GRACE=${TESTBED_GRACE:-20} pending="" t_rc=""
while :; do
  if IFS= read -r -t 2 -u "$qfd" line; then
    line=$pending$line; pending=""
  else
    st=$?
    if [ $st -le 128 ]; then [ -z "$pending$line" ] || printf '%s\n' "$pending$line"; break; fi
    pending+=$line   # read timed out: keep the partial line
    if [ -n "$t_rc" ] && [ $((SECONDS - t_rc)) -ge "$GRACE" ]; then
      echo "NESTED: QEMU still running ${GRACE}s after the scenario ended: killing it"
      [ -s "$WORK/qemu.pid" ] && kill -9 "$(cat "$WORK/qemu.pid")" 2>/dev/null || true
      t_rc=$((SECONDS + 3600))
    fi
    continue
  fi
  line=${line%$'\r'}
  printf '%s\n' "$line"; printf '%s\n' "$line" >> "$out"
  case $line in
    "NESTED: L1 init"*) t_init=$EPOCHREALTIME ;;
    "NESTED: kvm ready"*) t_kvm=$EPOCHREALTIME ;;
    "NESTED: script rc="*) t_done=$EPOCHREALTIME ;;
    "NESTED: done rc="*) rc=${line#NESTED: done rc=}; t_rc=$SECONDS ;;
  esac
done
exec {qfd}<&-
t1=$EPOCHREALTIME
[ -n "$rc" ] || { [ -n "$t_init" ] && rc=124 || rc=126; }
d() { if [ -n "$1" ]; then awk -v a="$t0" -v b="$1" 'BEGIN{printf "%.1fs", b-a}'; else echo n/a; fi; }
sd=n/a; [ -n "$t_kvm" ] && [ -n "$t_done" ] && sd=$(awk -v a="$t_kvm" -v b="$t_done" 'BEGIN{printf "%.1fs", b-a}')
msg="NESTED-RESULT: rc=$rc l1_init=$(d "$t_init") kvm_ready=$(d "$t_kvm") script=$sd total=$(d "$t1")"
echo "$msg"; [ -z "$LOG" ] || echo "$msg" >> "$LOG"
exit "$rc"
