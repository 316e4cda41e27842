#!/bin/sh
# guest-init: mount the API filesystems, print GUEST-READY on the console,
# report what the guest sees, then exit the VM (default: reboot -f).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
[ -e /proc/self ]  || mount -t proc proc /proc
[ -e /sys/kernel ] || mount -t sysfs sysfs /sys
[ -e /dev/null ]   || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /run /tmp 2>/dev/null
mount -t devpts devpts /dev/pts 2>/dev/null
act=reboot
for w in $(cat /proc/cmdline); do
  case "$w" in guest.exit=*) act=${w#guest.exit=} ;; esac
done
echo "GUEST-READY"
up=$(cut -d' ' -f1 /proc/uptime)
echo "guest: uptime=${up}s kernel=$(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo) memtotal=$(sed -n 's/^MemTotal: *//p' /proc/meminfo)"
echo "guest: root=$(awk '$2=="/" {print $1" "$3}' /proc/mounts | tail -1)"
for d in /sys/bus/virtio/devices/*; do
  [ -e "$d/device" ] || continue
  drv=$(readlink "$d/driver" 2>/dev/null); drv=${drv##*/}
  echo "guest: virtio ${d##*/} device-id=$(cat "$d/device") driver=${drv:-none}"
done
echo "guest: msi-irqs=$(grep -c MSI /proc/interrupts)"
echo "guest: exit=$act"
do_exit() {
  sync
  case "$1" in
    poweroff) poweroff -f 2>/dev/null || echo o > /proc/sysrq-trigger ;;
    halt)     halt -f 2>/dev/null ;;
    *)        reboot -f 2>/dev/null || echo b > /proc/sysrq-trigger ;;
  esac
}
case "$act" in
  shell)
    if command -v cttyhack >/dev/null 2>&1; then setsid cttyhack sh; else sh </dev/console >/dev/console 2>&1; fi
    do_exit reboot ;;
  *) do_exit "$act" ;;
esac
while :; do sleep 1; done
