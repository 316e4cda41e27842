# Block I/O benchmark scenario, run inside the test bed's L1 (busybox sh, cwd /scenario).
# Files: kapsel (in /bin), fio (in /bin), qemu-system-x86_64 (in /bin), bzImage, debian.ext4
# (Debian minbase + fio, guests/build.sh debian-ext4), fw/ (SeaBIOS + linuxboot_dma.bin).
# Each VM boots the Debian image (root=/dev/vda), runs two fio jobs against a second raw
# disk (/dev/vdb, a 256 MiB file in L1) and powers off; then fio runs in L1 on the same file.
# Output: one "BENCH <who> <job> <terse fio line>" per measurement.

RUNTIME=${RUNTIME:-10}
CMDLINE="console=ttyS0 reboot=k panic=-1 root=/dev/vda rw quiet guest.exit=shell"
JOB_RR="--name=rr --rw=randread --bs=4k --iodepth=32"
JOB_SEQ="--name=seq --rw=read --bs=1M --iodepth=8"
FIO_COMMON="--ioengine=libaio --time_based --runtime=$RUNTIME --minimal --group_reporting"

dd if=/dev/urandom of=bench.img bs=1M count=256 2>/dev/null

guest_cmds() {
  for job in "rr:$JOB_RR" "seq:$JOB_SEQ"; do
    name=${job%%:*}; args=${job#*:}
    printf 'fio %s --filename=/dev/vdb --direct=1 %s | sed "s/^/BENCH %s %s /"; ' \
      "$args" "$FIO_COMMON" "$1" "$name"
  done
  printf 'poweroff -f\n'
}

# run_shell NAME COMMAND...: boots COMMAND with its console on a FIFO, types the fio jobs
# once the guest shell is up, prints the console.
run_shell() {
  name=$1; shift
  rm -f /tmp/$name.in /tmp/$name.out; mkfifo /tmp/$name.in; : > /tmp/$name.out
  "$@" </tmp/$name.in >/tmp/$name.out 2>&1 &
  pid=$!
  exec 3>/tmp/$name.in
  i=0
  while [ $i -lt 600 ] && kill -0 $pid 2>/dev/null; do
    if grep -q 'guest: exit=shell' /tmp/$name.out; then
      sleep 2; guest_cmds "$name" >&3; break
    fi
    sleep 0.5; i=$((i + 1))
  done
  wait $pid
  exec 3>&-
  grep -a '^BENCH ' /tmp/$name.out || { echo "BENCH-FAILED $name"; tail -30 /tmp/$name.out; }
}

run_shell kapsel kapsel run --kernel bzImage --cmdline "$CMDLINE" --cpus 2 --memory 1G \
  --disk path=debian.ext4 --disk path=bench.img

run_shell qemu qemu-system-x86_64 -M q35,accel=kvm -cpu host -smp 2 -m 1G -nodefaults \
  -no-user-config -display none -vga none -serial stdio -L fw -kernel bzImage -append "$CMDLINE" \
  -drive file=debian.ext4,if=none,id=d0,format=raw -device virtio-blk-pci,drive=d0 \
  -drive file=bench.img,if=none,id=d1,format=raw -device virtio-blk-pci,drive=d1

# Native: the same jobs in L1 on the image file (buffered: L1 keeps it in RAM, no O_DIRECT).
for job in "rr:$JOB_RR" "seq:$JOB_SEQ"; do
  name=${job%%:*}; args=${job#*:}
  fio $args --filename=bench.img --direct=0 $FIO_COMMON | sed "s/^/BENCH native $name /"
done
