#!/usr/bin/env python3
"""Block and network I/O in the test bed: kapsel vs QEMU vs L1 itself ("native").

Inside ONE test-bed L1 (QEMU TCG -> L1 Linux with kvm_amd, see scripts/testbed.sh), the same
Debian image (`scripts/guest-artifacts.sh --debian-image`: bookworm minbase + fio + iperf3 +
iproute2) and the same guest kernel boot with `root=/dev/vda ro` under
- kapsel: `kapsel run --disk path=debian.ext4 --disk path=bench.img --net tap=auto,ip=…`
- QEMU: Debian's `qemu-system-x86_64 -M q35 -accel kvm -cpu host` (SeaBIOS, copied into L1
  with its libraries and ROMs) with two `virtio-blk-pci` drives (raw, QEMU's default cache
  and aio) and a `virtio-net-pci` on a TAP (vhost off: the userspace data path, like kapsel);
each with 2 vCPUs and 1 GiB. In each guest fio runs on the second disk (/dev/vdb, a 256 MiB
file in L1's RAM-backed rootfs) with libaio and O_DIRECT: 4k random reads, 1 MiB sequential
reads and 1 MiB sequential writes, each at iodepth 1 and 32, RUNTIME seconds; then iperf3
(TCP, RUNTIME seconds) to an iperf3 server in L1 on the TAP's address, guest->L1 and L1->guest
(-R). "Native" is the same fio job run in L1 on bench.img (buffered: tmpfs has no O_DIRECT,
and the VMMs read the same file through the same page cache). ROUNDS rounds, the order of
kapsel and QEMU alternating; medians reported. Absolute numbers carry the nested TCG
slowdown; the ratios are the result. `--write` replaces `## Block and network I/O` in
BENCHMARKS.md.

    benches/io.py [--rounds 3] [--runtime 5] [--write] [--from-log L1.log]
"""

import argparse
import datetime
import os
import re
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
import boot_linux as bl  # noqa: E402  (static kapsel, guest dir, test-bed runner)

SECTION = "## Block and network I/O"
CMDLINE = "console=ttyS0 reboot=k panic=-1 root=/dev/vda ro quiet guest.exit=shell"
# ROMs q35 + SeaBIOS loads for -kernel (virtio-net-pci gets romfile= : no PXE ROM)
QEMU_FILES = ["bios-256k.bin", "linuxboot_dma.bin", "kvmvapic.bin"]

# (name, fio arguments); every job: --direct=1 --ioengine=libaio in the guests
JOBS = [
    ("randread-4k-qd1", "--rw=randread --bs=4k --iodepth=1"),
    ("randread-4k-qd32", "--rw=randread --bs=4k --iodepth=32"),
    ("read-1m-qd1", "--rw=read --bs=1M --iodepth=1"),
    ("read-1m-qd32", "--rw=read --bs=1M --iodepth=32"),
    ("write-1m-qd1", "--rw=write --bs=1M --iodepth=1"),
    ("write-1m-qd32", "--rw=write --bs=1M --iodepth=32"),
]

HELPERS = r"""
export NO_COLOR=1
# vm_bench WHO NET_L1_IP GUEST_IP COMMAND...: boots COMMAND with its console on a FIFO, types
# the benchmark once the guest shell answers, prints the BENCH lines
vm_bench() {
  who=$1 hostip=$2 guestip=$3; shift 3
  rm -f /tmp/$who.in /tmp/$who.out; mkfifo /tmp/$who.in; : > /tmp/$who.out
  t0=$(cut -d' ' -f1 /proc/uptime)
  "$@" </tmp/$who.in >/tmp/$who.out 2>&1 &
  pid=$!
  exec 3>/tmp/$who.in
  i=0 up=0
  while [ $i -lt 1200 ] && kill -0 $pid 2>/dev/null; do
    if grep -q 'SHELL-UP-3' /tmp/$who.out; then up=1; break; fi
    if [ $((i % 4)) = 0 ] && grep -q 'guest: exit=shell' /tmp/$who.out; then
      echo 'echo SHELL-UP-$((1+2))' >&3
    fi
    sleep 0.5; i=$((i + 1))
  done
  echo "BENCH-BOOT who=$who up=$up seconds=$(awk -v a=$t0 -v b=$(cut -d' ' -f1 /proc/uptime) 'BEGIN{printf "%.1f", b-a}')"
  if [ $up = 1 ]; then
    [ "$who" = qemu ] && { ip addr add $hostip/24 dev qtap0; ip link set qtap0 up; }
    guest_cmds $hostip $guestip >&3
  fi
  # bounded: every job has a runtime; a stalled VM is killed and reported
  i=0
  while [ $i -lt $((BUDGET * 2)) ] && kill -0 $pid 2>/dev/null; do sleep 0.5; i=$((i + 1)); done
  if kill -0 $pid 2>/dev/null; then
    echo "BENCH-STALL who=$who after=${BUDGET}s"; kill -9 $pid
  fi
  wait $pid
  exec 3>&-
  # the guest shell's prompt and echo share the console: take each BENCH line from its marker
  # (patterns that the echo of the typed commands cannot match)
  grep -aoE 'BENCH (fio job=[^ ]* terse=3;|iperf dir=[^ ]* line=(\[|CPU|GUESTCPU cpu)).*' /tmp/$who.out \
    | sed "s/^BENCH /BENCH who=$who /"
  # (the kernel's power-off message may cut the marker's end)
  grep -q 'BENCH-GUEST-2-' /tmp/$who.out || { echo "BENCH-FAILED who=$who"; tail -40 /tmp/$who.out; }
}
"""


def guest_cmds(runtime):
    """A shell function that prints the command lines typed into the guest shell."""
    lines = ["mount -t tmpfs tmpfs /tmp; stty -echo",
             "ip addr add $2/24 dev eth0; ip link set eth0 up; ip link set lo up",
             "sleep 1"]
    for name, args in JOBS:
        lines.append(
            f"fio --name={name} --filename=/dev/vdb --direct=1 --ioengine=libaio {args} "
            f"--time_based --runtime={runtime} --minimal | sed 's/^/BENCH fio job={name} terse=/'")
    for name, rev in [("guest-to-l1", ""), ("l1-to-guest", " -R")]:
        # guest CPU: /proc/stat before and after (iperf3 -R prints no CPU figure)
        lines.append(
            f"a=$(head -n1 /proc/stat); iperf3 -c $1 -t {runtime} -f m -V{rev} 2>&1 | "
            f"grep -E 'sender$|receiver$|CPU Utilization' | tr -s ' ' | "
            f"sed 's/^/BENCH iperf dir={name} line=/'; "
            f"echo \"BENCH iperf dir={name} line=GUESTCPU $a|$(head -n1 /proc/stat)\"")
    # minbase has no poweroff (no init system): the kernel's sysrq does it
    lines.append("echo BENCH-GUEST-$((1+1))-DONE; echo o > /proc/sysrq-trigger")
    body = "".join(f"  printf '%s\\n' {sh_quote(l)}\n" for l in lines)
    return "guest_cmds() {\n" + body.replace("$1", "'\"$1\"'").replace("$2", "'\"$2\"'") + "}\n"


def sh_quote(s):
    return "'" + s.replace("'", "'\\''") + "'"


def scenario(rounds, runtime):
    budget = 120 + len(JOBS) * (runtime + 15) + 2 * (runtime + 20)
    s = HELPERS + guest_cmds(runtime) + f"BUDGET={budget}\n"
    s += "dd if=/dev/urandom of=bench.img bs=1M count=256 2>/dev/null\n"
    s += "iperf3 -s -D >/dev/null 2>&1\n"
    kapsel = ("vm_bench kapsel 10.0.2.1 10.0.2.15 kapsel run --kernel bzImage "
              f"--cmdline {sh_quote(CMDLINE)} --cpus 2 --memory 1G "
              "--disk path=debian.ext4,readonly=on --disk path=bench.img "
              "--net tap=auto,ip=10.0.2.1/24\n")
    qemu = ("vm_bench qemu 10.0.3.1 10.0.3.15 qemu-system-x86_64 -L /usr/share/qemu -M q35 "
            "-accel kvm -cpu host -smp 2 -m 1G -nodefaults -no-user-config -display none "
            f"-vga none -serial stdio -no-reboot -kernel bzImage -append {sh_quote(CMDLINE)} "
            "-drive file=debian.ext4,if=none,id=d0,format=raw,readonly=on "
            "-device virtio-blk-pci,drive=d0 "
            "-drive file=bench.img,if=none,id=d1,format=raw -device virtio-blk-pci,drive=d1 "
            "-netdev tap,id=n0,ifname=qtap0,script=no,downscript=no "
            "-device virtio-net-pci,netdev=n0,romfile=\n")
    native = "".join(
        f"fio --name={name} --filename=bench.img --direct=0 --ioengine=libaio {args} "
        f"--time_based --runtime={runtime} --minimal | sed 's/^/BENCH who=native fio job={name} terse=/'\n"
        for name, args in JOBS)
    for r in range(rounds):
        s += f"echo BENCH-ROUND {r + 1}\n"
        order = [kapsel, qemu] if r % 2 == 0 else [qemu, kapsel]
        s += order[0] + native + order[1]
    return s + "echo BENCH-DONE\n"


def parse(output, rounds):
    """{(who, kind, job): [dict, ...]} and the problems: stalls, failed fio jobs and missing
    samples (a VM that died or stalled leaves its round's figures out)."""
    res, problems = {}, []
    for line in output.splitlines():
        line = line.rstrip("\r")
        if line.startswith("BENCH-STALL"):
            problems.append(line)
        if not line.startswith("BENCH who="):
            continue
        who = re.search(r"who=(\S+)", line).group(1)
        if " fio job=" in line:
            job = re.search(r"job=(\S+)", line).group(1)
            terse = line.split("terse=", 1)[1]
            if not terse.startswith("3;"):
                continue  # the guest's echo of the typed command line
            f = terse.split(";")
            if len(f) < 90 or f[4] != "0":
                problems.append(line[:160])
                continue
            rd = job.startswith("read") or job.startswith("randread")
            res.setdefault((who, "fio", job), []).append({
                "iops": float(f[7] if rd else f[48]),
                "mbs": float(f[6] if rd else f[47]) / 1024.0,  # KiB/s -> MiB/s
                "usr": float(f[87].rstrip("%")),
                "sys": float(f[88].rstrip("%")),
            })
        elif " iperf dir=" in line:
            d = re.search(r"dir=(\S+)", line).group(1)
            text = line.split("line=", 1)[1]
            runs = res.setdefault((who, "iperf", d), [])
            m = re.search(r"([\d.]+) Mbits/sec.*receiver$", text)
            if m:
                runs.append({"mbits": float(m.group(1))})
            m = re.search(r"CPU Utilization: local/\S+ ([\d.]+)%", text)
            if m and runs:
                runs[-1]["iperf_cpu"] = float(m.group(1))
            m = re.match(r"GUESTCPU cpu ([\d ]+)\|cpu ([\d ]+)$", text)
            if m and runs:
                runs[-1]["guest_cpu"] = busy_percent(m.group(1), m.group(2))
    for who in ("kapsel", "qemu", "native"):
        keys = [("fio", name) for name, _ in JOBS]
        if who != "native":
            keys += [("iperf", "guest-to-l1"), ("iperf", "l1-to-guest")]
        for kind, name in keys:
            n = len(res.get((who, kind, name), []))
            if n < rounds:
                problems.append(f"{who} {name}: {n} of {rounds} samples")
    return res, problems


def busy_percent(before, after):
    """Busy share of all vCPUs between two /proc/stat `cpu` lines (idle and iowait idle)."""
    a = [int(x) for x in before.split()]
    b = [int(x) for x in after.split()]
    delta = [y - x for x, y in zip(a, b)]
    total = sum(delta[:8])
    return 100.0 * (total - delta[3] - delta[4]) / total if total > 0 else None


def med(res, key, field):
    vals = [e[field] for e in res.get(key, []) if field in e]
    return statistics.median(vals) if vals else None


def ratio(a, b):
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}×"


def f1(v, digits=0):
    return "n/a" if v is None else f"{v:.{digits}f}"


def report(res, problems, rounds, runtime, cmd, when):
    lines = [
        SECTION, "",
        "The Debian image (`scripts/guest-artifacts.sh --debian-image`: bookworm minbase + fio +",
        "iperf3 + iproute2) and the Linux 6.1 guest kernel, `root=/dev/vda ro`, 2 vCPUs, 1 GiB, inside",
        "ONE test-bed L1 (QEMU TCG → L1 Linux 6.1 with kvm_amd, 2 vCPUs → L2). kapsel: `--disk`",
        "(raw) + `--net tap=auto`; QEMU: Debian's 7.2 `-M q35 -accel kvm` with `virtio-blk-pci`",
        "(raw, default cache/aio) and `virtio-net-pci` on a TAP (vhost off). fio in the guest on",
        "/dev/vdb (a 256 MiB file in L1's RAM-backed rootfs), libaio, O_DIRECT; native: the same",
        "job in L1 on that file (buffered: tmpfs has no O_DIRECT; the VMMs read it through the same",
        "page cache). iperf3 TCP between the guest and a server in L1 on the TAP address.",
        f"{runtime} s per job, {rounds} interleaved rounds (kapsel and QEMU order alternating),",
        "medians. Nested TCG makes every absolute figure small and noisy (2 host cores run all of",
        f"L1 and L2); read the ratios. CPU: the guest's fio usr/sys %. Measured {when}.",
        "",
        "| fio job | kapsel | QEMU | native (L1) | kapsel/QEMU | kapsel/native | guest CPU usr/sys % kapsel | QEMU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, _ in JOBS:
        field = "iops" if "4k" in name else "mbs"
        unit = "IOPS" if field == "iops" else "MiB/s"
        k = med(res, ("kapsel", "fio", name), field)
        q = med(res, ("qemu", "fio", name), field)
        n = med(res, ("native", "fio", name), field)
        cpu = {w: f"{f1(med(res, (w, 'fio', name), 'usr'), 1)}/{f1(med(res, (w, 'fio', name), 'sys'), 1)}"
               for w in ("kapsel", "qemu")}
        lines.append(f"| {name} ({unit}) | {f1(k)} | {f1(q)} | {f1(n)} | {ratio(k, q)} | "
                     f"{ratio(k, n)} | {cpu['kapsel']} | {cpu['qemu']} |")
    lines += ["", "| iperf3 TCP | kapsel (Mbit/s) | QEMU (Mbit/s) | kapsel/QEMU | guest CPU % kapsel | QEMU | iperf3's own CPU % kapsel | QEMU |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for d in ("guest-to-l1", "l1-to-guest"):
        k = med(res, ("kapsel", "iperf", d), "mbits")
        q = med(res, ("qemu", "iperf", d), "mbits")
        lines.append(f"| {d} | {f1(k)} | {f1(q)} | {ratio(k, q)} | "
                     + " | ".join(f1(med(res, (w, "iperf", d), field), 1)
                                  for field in ("guest_cpu", "iperf_cpu")
                                  for w in ("kapsel", "qemu")) + " |")
    lines += ["", "Every round (run order), to show the spread the medians hide:", ""]
    for name, _ in JOBS + [("guest-to-l1", None), ("l1-to-guest", None)]:
        kind = "fio" if name in dict(JOBS) else "iperf"
        field = "iops" if "4k" in name else ("mbs" if kind == "fio" else "mbits")
        per = []
        for w in ("kapsel", "qemu", "native"):
            vals = [round(e[field]) for e in res.get((w, kind, name), []) if field in e]
            if vals:
                per.append(f"{w} {vals}")
        lines.append(f"- {name}: " + "; ".join(per))
    samples = {w: sum(len(v) for k, v in res.items() if k[0] == w) for w in ("kapsel", "qemu", "native")}
    lines += ["", f"Samples: {samples}. Problems: {problems or 'none'}.", "",
              "Command:", "", "    " + " ".join(cmd), ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runtime", type=int, default=5)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--from-log", help="report from the L1 log of an earlier run (testbed.sh -o)")
    args = ap.parse_args()
    subprocess.run([os.path.join(bl.ROOT, "scripts", "setup-host.sh"), "--io-bench"], check=True)
    gd = bl.guest_dir()
    image = os.environ.get("KAPSEL_DEBIAN_IMAGE") or subprocess.run(
        [os.path.join(bl.ROOT, "scripts", "guest-artifacts.sh"), "--debian-image"],
        check=True, stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()[-1]
    tb = ["-b", bl.static_kapsel(), "-b", "/usr/bin/fio", "-b", "/usr/bin/iperf3",
          "-b", "/usr/bin/qemu-system-x86_64",
          "-f", os.path.join(gd, "bzImage") + ":bzImage", "-f", image + ":debian.ext4",
          "-r", "5G", "-p", "2"]
    for name in QEMU_FILES:
        src = os.path.join("/usr/share/qemu", name)
        if not os.path.exists(src):
            src = os.path.join("/usr/share/seabios", name)
        tb += ["-f", f"{src}:/usr/share/qemu/{name}"]
    timeout = 300 + args.rounds * (2 * (200 + 8 * (args.runtime + 15)) + 6 * (args.runtime + 5))
    out, cmd = bl.run_testbed(tb, scenario(args.rounds, args.runtime), timeout,
                              "kapsel-bench-io.log", args.from_log)
    res, problems = parse(out, args.rounds)
    when = benchlib.utc_now()
    if args.from_log:
        mtime = datetime.datetime.fromtimestamp(os.path.getmtime(args.from_log), datetime.timezone.utc)
        when = mtime.strftime("%Y-%m-%d %H:%M UTC")
    text = report(res, problems, args.rounds, args.runtime,
                  ["benches/io.py", f"--rounds {args.rounds}", f"--runtime {args.runtime}"]
                  + (["--write"] if args.write else []), when)
    print(text)
    if args.write:
        benchlib.write_section(SECTION, text)


if __name__ == "__main__":
    main()
