#!/usr/bin/env python3
"""Snapshot and restore of a Linux guest in the test bed: kapsel vs QEMU migrate-to-file.

Inside ONE test-bed L1 (see scripts/testbed.sh and benches/boot_linux.py), for each guest
memory size (256 MiB and 1 GiB by default) and each VMM: boot the L2 Linux guest (bzImage +
busybox initramfs, 1 vCPU, shell on the console), start a loop that prints `tick-N` every
10 ms and fill a quarter of guest memory with non-zero data (so the snapshot has real
content); then
- snapshot N times: kapsel `vm pause` + `vm snapshot DIR` (+ `vm resume`), QEMU HMP `stop` +
  `migrate -d "exec:cat > FILE"` polled with `info migrate` to `completed` (+ `cont`), with
  QEMU's max-bandwidth raised to 100 GiB/s (its 32 MiB/s default would measure a throttle);
  time: the command until the file is complete (kapsel: the `kapsel vm snapshot` process;
  QEMU: from sending `migrate` to `completed` seen), and the VMM's own figure (kapsel
  `duration_ms`, QEMU `total time`);
- restore N times, each in a fresh process: kapsel `restore DIR`, QEMU `-incoming
  "exec:cat FILE"` (the source was stopped, so the helper sends `cont` as soon as the
  incoming migration is done). Latency: process fork in L1 until the guest prints its next
  `tick-` (the guest runs again; ≤ 10 ms quantisation, same for both); for kapsel also the
  VMM's `vCPUs started elapsed_us` (process start to vCPUs running).
Files live in L1's RAM-backed rootfs. Absolute times carry the nested TCG slowdown; the
ratios are the result. `--write` replaces `## Snapshot and restore` in BENCHMARKS.md.

    benches/snapshot.py [--runs 3] [--sizes 256M,1G] [--write]
"""

import argparse
import os
import re
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import boot_linux as bl  # noqa: E402  (shared helpers: kt, test bed, BENCHMARKS.md)

SECTION = "## Snapshot and restore"
TARGET_SPEEDUP = 5.0
CMDLINE = "console=ttyS0 reboot=k panic=-1 rdinit=/init quiet guest.exit=shell"

# busybox sh in L1; SIZE (e.g. 256M), MIB, FILL_MIB and RUNS are set before this text
HELPERS = r"""
export NO_COLOR=1
now() { kt now; }
# start NAME CMD...: a VMM in the background, stdin from a FIFO on fd 3, output in /tmp/NAME.out
start() {
  _n=$1; shift
  rm -f /tmp/$_n.in /tmp/$_n.out; mkfifo /tmp/$_n.in; : > /tmp/$_n.out
  "$@" </tmp/$_n.in >/tmp/$_n.out 2>&1 &
  echo $! > /tmp/$_n.pid
  exec 3>/tmp/$_n.in
}
waitfor() {  # NAME STRING SECONDS
  _i=0
  while [ $_i -lt $(($3 * 20)) ]; do
    grep -qF -- "$2" /tmp/$1.out && return 0
    usleep 50000; _i=$((_i + 1))
  done
  echo "BENCH-ERROR $1: no $2 within $3 s"; tail -5 /tmp/$1.out; return 1
}
# prepare NAME: shell up, echo off, fill memory, start ticking
prepare() {
  waitfor $1 'guest: exit=shell' 300 || return 1
  _i=0
  while [ $_i -lt 60 ] && ! grep -q 'SHELL-UP-3' /tmp/$1.out; do
    echo 'echo SHELL-UP-$((1+2))' >&3; sleep 1; _i=$((_i + 1))
  done
  # non-zero data: a 1 MiB block (a hex pattern), copied FILL_MIB times into the rootfs
  echo "stty -echo; b=0123456789abcdef; while [ \${#b} -lt 1048576 ]; do b=\$b\$b; done; printf %s \"\$b\" > /tmp/blk; i=0; while [ \$i -lt $FILL_MIB ]; do cat /tmp/blk; i=\$((i+1)); done > /tmp/fill; echo FILLED-\$((\$(stat -c %s /tmp/fill) / 1048576))" >&3
  waitfor $1 "FILLED-$FILL_MIB" 600 || return 1
  echo 'i=0; while :; do echo tick-$i; i=$((i+1)); usleep 10000; done &' >&3
  waitfor $1 'tick-20' 60
}
stop() { kill -9 "$(cat /tmp/$1.pid)" 2>/dev/null; wait "$(cat /tmp/$1.pid)" 2>/dev/null; exec 3>&-; }
"""

SCENARIO = r"""
echo "BENCH-START size=$SIZE"
# ---- kapsel
start ks kapsel run --kernel bzImage --initrd initramfs.cpio.gz --cmdline "$CMD" --cpus 1 --memory $SIZE --api-socket /tmp/ks.sock
prepare ks && echo "BENCH-READY vmm=kapsel size=$SIZE"
for r in $(seq $RUNS); do
  kapsel vm pause --api-socket /tmp/ks.sock >/dev/null
  t0=$(now); out=$(kapsel vm snapshot /tmp/ksnap$r --api-socket /tmp/ks.sock | tr -d ' \n'); t1=$(now)
  vmm_ms=$(echo "$out" | grep -o '"duration_ms":[0-9]*' | cut -d: -f2)
  echo "BENCH-SNAP vmm=kapsel size=$SIZE run=$r us=$((t1 - t0)) vmm_ms=${vmm_ms:-none} file_kib=$(du -k /tmp/ksnap$r/memory | cut -f1)"
  kapsel vm resume --api-socket /tmp/ks.sock >/dev/null
  usleep 200000
done
stop ks
for r in $(seq $RUNS); do
  res=$(kt mark -k -m 'vCPUs started' -m tick- 120 kapsel --log info restore /tmp/ksnap1 </dev/null | grep -E 'KT-|elapsed_us' | tr '\n' ' ')
  echo "BENCH-RESTORE vmm=kapsel size=$SIZE run=$r $res"
done
rm -rf /tmp/ksnap*
# ---- QEMU
start qs qemu-system-x86_64 -L /usr/share/qemu -M microvm -enable-kvm -smp 1 -m $SIZE -nodefaults -no-user-config -display none -serial stdio -kernel bzImage -initrd initramfs.cpio.gz -append "$CMD" -monitor unix:/tmp/qs.mon,server,nowait
prepare qs && echo "BENCH-READY vmm=qemu size=$SIZE"
kt hmp /tmp/qs.mon 'migrate_set_parameter max-bandwidth 100G' >/dev/null
for r in $(seq $RUNS); do
  kt hmp /tmp/qs.mon stop >/dev/null
  res=$(kt hmp /tmp/qs.mon "migrate -d \"exec:cat > /tmp/qsnap$r\"" 'info migrate' 'Migration status: completed' 300)
  us=$(echo "$res" | sed -n 's/^KT-HMP us=//p')
  tt=$(echo "$res" | sed -n 's/^total time: \([0-9]*\) ms.*/\1/p')
  st=$(echo "$res" | sed -n 's/^Migration status: \([a-z-]*\).*/\1/p')
  echo "BENCH-SNAP vmm=qemu size=$SIZE run=$r us=$us vmm_ms=${tt:-none} status=$st file_kib=$(du -k /tmp/qsnap$r | cut -f1)"
  kt hmp /tmp/qs.mon cont >/dev/null
  usleep 200000
done
stop qs
for r in $(seq $RUNS); do
  rm -f /tmp/qr.mon
  res=$(kt mark -q -k -c /tmp/qr.mon -m tick- 120 qemu-system-x86_64 -L /usr/share/qemu -M microvm -enable-kvm -smp 1 -m $SIZE -nodefaults -no-user-config -display none -serial stdio -kernel bzImage -initrd initramfs.cpio.gz -append "$CMD" -monitor unix:/tmp/qr.mon,server,nowait -incoming "exec:cat /tmp/qsnap1" </dev/null | tr '\n' ' ')
  echo "BENCH-RESTORE vmm=qemu size=$SIZE run=$r $res"
done
rm -f /tmp/qsnap*
echo "BENCH-END size=$SIZE"
"""


def scenario(sizes, runs):
    text = HELPERS
    for size in sizes:
        mib = parse_mib(size)
        text += (f"\nSIZE={size} MIB={mib} FILL_MIB={mib // 4} RUNS={runs} CMD='{CMDLINE}'\n"
                 + SCENARIO)
    return text + "echo BENCH-DONE\n"


def parse_mib(size):
    m = re.fullmatch(r"(\d+)([MG])", size)
    if not m:
        sys.exit(f"snapshot: size {size!r}: use e.g. 256M or 1G")
    return int(m.group(1)) * (1024 if m.group(2) == "G" else 1)


def parse(output):
    snaps, restores, errors = {}, {}, []
    for line in output.splitlines():
        if line.startswith("BENCH-SNAP "):
            f = bl.kv(line)
            snaps.setdefault((f["size"], f["vmm"]), []).append(f)
        elif line.startswith("BENCH-RESTORE "):
            f = {}
            marks = dict(re.findall(r"KT-MARK i=(\d+) us=(\d+)", line))
            cont = re.search(r"KT-CONT us=(\d+)", line)
            vmm_us = re.search(r"elapsed_us=(\d+)", line)
            head = bl.kv(line.split("KT-")[0])
            f.update(head)
            tick_idx = "1" if head["vmm"] == "kapsel" else "0"
            f["tick_us"] = int(marks[tick_idx]) if tick_idx in marks else None
            f["cont_us"] = int(cont.group(1)) if cont else None
            f["vmm_us"] = int(vmm_us.group(1)) if vmm_us else None
            restores.setdefault((f["size"], f["vmm"]), []).append(f)
        elif line.startswith("BENCH-ERROR"):
            errors.append(line)
    return snaps, restores, errors


def med(values):
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v, scale=1000.0, digits=1):
    return "n/a" if v is None else f"{v / scale:.{digits}f}"


def report(snaps, restores, errors, sizes, runs, cmd):
    lines = [
        SECTION,
        "",
        "Linux 6.1 guest (bzImage + busybox initramfs, 1 vCPU, shell on the console, a loop printing",
        "`tick-N` every 10 ms, a quarter of guest memory filled with non-zero data in tmpfs), inside",
        "ONE test-bed L1 (QEMU TCG → L1 Linux with kvm_amd → L2); files in L1's RAM-backed rootfs.",
        "Snapshot: the paused guest to files (kapsel `vm pause` + `vm snapshot`; QEMU `stop` +",
        "`migrate -d \"exec:cat > FILE\"` polled to `completed`, max-bandwidth 100G). Restore: a fresh",
        "process from fork in L1 to the guest's next `tick-` on its console (kapsel `restore DIR`;",
        "QEMU `-incoming \"exec:cat FILE\"` + `cont` sent by the helper as soon as the load is done).",
        f"{runs} runs each; medians. Measured {bl.utc_now()}.",
        "",
        "| guest memory | VMM | snapshot (ms) | VMM's own figure (ms) | ms per GiB of guest memory | file on disk (MiB) | restore to running (ms) | restore, VMM clock (ms) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for size in sizes:
        gib = parse_mib(size) / 1024.0
        row = {}
        for vmm, label in [("kapsel", "kapsel"), ("qemu", "QEMU migrate/-incoming")]:
            s = snaps.get((size, vmm), [])
            r = restores.get((size, vmm), [])
            snap_us = med([int(x["us"]) for x in s if x.get("us", "").isdigit()])
            # QEMU's `info migrate` now and then shows `total time: 0 ms` for a completed
            # migration: not a measurement, left out
            own = med([int(x["vmm_ms"]) for x in s
                       if x.get("vmm_ms", "").isdigit() and int(x["vmm_ms"]) > 0])
            kib = med([int(x["file_kib"]) for x in s if x.get("file_kib", "").isdigit()])
            tick = med([x["tick_us"] for x in r])
            fails = sum(1 for x in r if x["tick_us"] is None)
            vmm_clock = med([x["vmm_us"] for x in r]) if vmm == "kapsel" else None
            row[vmm] = (snap_us, tick)
            per_gib = None if snap_us is None else snap_us / gib
            note = f" ({fails}/{len(r)} never ran)" if fails else ""
            lines.append(
                f"| {size} | {label} | {fmt(snap_us)} | {fmt(own, 1, 0)} | {fmt(per_gib)} | "
                f"{fmt(kib, 1024.0)} | {fmt(tick)}{note} | {fmt(vmm_clock)} |")
        ks, kr = row["kapsel"]
        qs, qr = row["qemu"]
        sp_s = qs / ks if ks and qs else None
        sp_r = qr / kr if kr and qr else None
        lines.append(f"| {size} | **QEMU / kapsel** | **{sp_s:.1f}×** | | | | **{sp_r:.1f}×** | |"
                     if sp_s and sp_r else f"| {size} | QEMU / kapsel | n/a | | | | n/a | |")
        verdicts.append((size, sp_s, sp_r))
    lines.append("")
    for size, sp_s, sp_r in verdicts:
        def v(x):
            if x is None:
                return "n/a"
            return f"{'meets' if x >= TARGET_SPEEDUP else 'misses'} ({x:.1f}×)"
        lines.append(f"Target ≥ {TARGET_SPEEDUP:.0f}× faster than QEMU, {size}: snapshot {v(sp_s)}, "
                     f"restore {v(sp_r)}.")
    lines += [
        "",
        "Reading the numbers:",
        "- Restore: kapsel maps the memory file copy-on-write, so its restore does not grow with",
        "  guest memory (VMM clock ~130 ms in L1, where every syscall and page fault of L1 is",
        "  emulated by TCG); QEMU reads the whole stream before the guest can run, so its restore",
        "  grows with the memory in use.",
        "- Snapshot: both leave zero pages out (kapsel: holes in a sparse file, pages the guest",
        "  never touched skipped through /proc/self/pagemap since commit 9af50c4; QEMU: zero-page",
        "  flags) and both write the same ~¼ of memory that holds data. The fill (a shell building",
        "  the data through pipes and the page cache) has the guest touch most of its RAM, so kapsel",
        "  still reads most pages here; what is left is copying ~90/300 MiB into L1's page cache,",
        "  which TCG makes slow. The 5× target is missed; larger writes from a helper thread while",
        "  the guest runs on (dirty-log pre-copy) would be the next step.",
        "- The machine is shared (other jobs' test beds run at the same time); interleaving and",
        "  medians keep the ratios fair, the absolute numbers scatter.",
    ]
    if errors:
        lines += ["", "Errors during the run:", ""] + [f"- `{e}`" for e in errors]
    lines += ["", "Command (host):", "", "```",
              f"benches/snapshot.py --runs {runs} --sizes {','.join(sizes)} --write",
              "# runs: " + " ".join(cmd), "```", ""]
    return "\n".join(lines)


def kept_subsections():
    """The `### ` parts of SECTION in BENCHMARKS.md (restore_tiny.py writes one): kept when this
    script rewrites the section."""
    try:
        with open(os.path.join(bl.ROOT, "BENCHMARKS.md")) as f:
            old = f.read()
    except FileNotFoundError:
        return ""
    start = old.find(SECTION + "\n")
    if start < 0:
        return ""
    end = old.find("\n## ", start + len(SECTION))
    section = old[start:end + 1 if end >= 0 else len(old)]
    sub = section.find("\n### ")
    return section[sub + 1:] if sub >= 0 else ""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sizes", default="256M,1G")
    ap.add_argument("--qemu", default="/usr/bin/qemu-system-x86_64")
    ap.add_argument("--l1-memory", default="6G")
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    ap.add_argument("--from-log", help="report from the L1 log of an earlier run (testbed.sh -o)")
    args = ap.parse_args()
    sizes = args.sizes.split(",")

    gd = bl.guest_dir()
    work = tempfile.mkdtemp(prefix="kapsel-bench-")
    kt = bl.build_kt(work)
    tb_args = ["-k", os.path.join(gd, "host", "bzImage"), "-r", args.l1_memory,
               "-b", bl.static_kapsel(), "-b", kt,
               "-f", os.path.join(gd, "initramfs-busybox.cpio.gz") + ":initramfs.cpio.gz",
               "-f", os.path.join(gd, "bzImage") + ":bzImage"]
    tb_args += bl.qemu_files(args.qemu)
    out, cmd = bl.run_testbed(tb_args, scenario(sizes, args.runs), timeout=3600,
                              log_name="kapsel-bench-snapshot.log", from_log=args.from_log)
    snaps, restores, errors = parse(out)
    text = report(snaps, restores, errors, sizes, args.runs, cmd)
    print(text)
    if args.write:
        kept = kept_subsections().rstrip("\n")
        bl.write_section(SECTION, text.rstrip("\n") + ("\n\n" + kept if kept else "") + "\n")


if __name__ == "__main__":
    main()
