#!/usr/bin/env python3
"""Restore latency of the no_std test guest directly on /dev/kvm (no test bed).

Boots the test guest (`scripts/build-test-guest.sh`, PVH entry, payload `count`: a line
`count: N` about every 100 ms) with the given memory, pauses it, snapshots it once, then
restores that snapshot N times, each in a fresh `kapsel --log info restore DIR` process:
- VMM time: `vCPUs started elapsed_us=…` that kapsel logs (from its process start, i.e. the
  first instruction of main, to every vCPU thread running the guest);
- wall time: from spawning the process here until that log line arrives on its stderr;
- first count: until the guest's next `count:` line on stdout (quantised by the guest's
  100 ms period; shows the guest really runs, not a latency figure).
Prints medians and p90; `--write` replaces the `### Restore of the tiny guest on /dev/kvm`
part of the `## Snapshot and restore` section of BENCHMARKS.md.

Python 3 standard library only:  benches/restore_tiny.py [--runs 20] [--memory 256M] [--write]
"""

import argparse
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import boot_linux as bl  # noqa: E402  (host description)
from benchlib import build_test_guest, pct, release_kapsel, write_subsection  # noqa: E402

SECTION = "## Snapshot and restore"
SUBSECTION = "### Restore of the tiny guest on /dev/kvm"
TARGET_MS = 10.0


def read_until(proc, stream_name, pattern, timeout, seen):
    """Reads proc's stdout/stderr until PATTERN (bytes regex) shows on STREAM_NAME; returns the
    match and the time it arrived. SEEN collects what each stream said."""
    streams = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr"}
    deadline = time.perf_counter() + timeout
    rx = re.compile(pattern)
    while True:
        m = rx.search(seen[stream_name])
        if m:
            return m, time.perf_counter()
        left = deadline - time.perf_counter()
        if left <= 0:
            raise RuntimeError(f"no {pattern!r} on {stream_name} within {timeout}s: {seen}")
        ready, _, _ = select.select(list(streams), [], [], left)
        for fd in ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                if proc.poll() is not None:
                    raise RuntimeError(f"kapsel exited ({proc.returncode}): {seen}")
                continue
            seen[streams[fd]] += chunk


def spawn(cmd):
    env = dict(os.environ, NO_COLOR="1")
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)


def kill(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()


def make_snapshot(kapsel, guest, memory, cpus, work):
    sock = os.path.join(work, "api.sock")
    snap = os.path.join(work, "snap")
    cmd = [kapsel, "run", "--kernel", guest, "--cmdline", "test=count", "--cpus", str(cpus),
           "--memory", memory, "--api-socket", sock]
    proc = spawn(cmd)
    seen = {"stdout": b"", "stderr": b""}
    try:
        read_until(proc, "stdout", rb"count: 3\b", 30, seen)
        for op in (["pause"], ["snapshot", snap]):
            subprocess.run([kapsel, "vm", *op, "--api-socket", sock], check=True,
                           stdout=subprocess.DEVNULL)
    finally:
        kill(proc)
    return snap, cmd


def one_restore(kapsel, snap):
    cmd = [kapsel, "--log", "info", "restore", snap]
    t0 = time.perf_counter()
    proc = spawn(cmd)
    seen = {"stdout": b"", "stderr": b""}
    try:
        m, t_started = read_until(proc, "stderr", rb"vCPUs started elapsed_us=(\d+)", 20, seen)
        _, t_count = read_until(proc, "stdout", rb"count: \d+", 20, seen)
    finally:
        kill(proc)
    return int(m.group(1)), (t_started - t0) * 1e6, (t_count - t0) * 1e6, cmd


def report(vmm_us, wall_us, count_us, runs, memory, cpus, boot_cmd, restore_cmd, snap_kib, load):
    def row(name, vals):
        return (f"| {name} | {statistics.median(vals) / 1000:.2f} | {pct(vals, 90) / 1000:.2f} | "
                f"{min(vals) / 1000:.2f} | {max(vals) / 1000:.2f} |")
    med = statistics.median(vmm_us) / 1000
    verdict = "meets" if med <= TARGET_MS else "misses"
    return "\n".join([
        SUBSECTION,
        "",
        f"The no_std test guest (payload `count`, {cpus} vCPU, {memory}) snapshotted once while",
        f"paused (memory file {snap_kib} KiB on disk, sparse), then restored {runs} times, each in a",
        f"fresh process, directly on this machine's /dev/kvm ({bl.host_kvm()}). Measured {bl.utc_now()},",
        f"load average {load[0]:.1f} before / {load[1]:.1f} after (the machine is shared: other jobs' test",
        "beds run QEMU TCG on both cores, which inflates and scatters these times).",
        "",
        "| restore | median (ms) | p90 (ms) | min (ms) | max (ms) |",
        "|---|---:|---:|---:|---:|",
        row("VMM time: process start → `vCPUs started`", vmm_us),
        row("wall: spawn → `vCPUs started` line read", wall_us),
        row("wall: spawn → guest's next `count:` line (100 ms period)", count_us),
        "",
        f"Target ≤ {TARGET_MS:.0f} ms of VMM time: {verdict} ({med:.2f} ms).",
        "",
        "Where the time goes (`strace -f -T` of single restores, 2026-11-22): the one",
        "`KVM_SET_USER_MEMORY_REGION` for the 256 MiB slot takes 5–16 ms on kvm_pvm, and as long",
        "(6–10 ms) in a fresh `kapsel run`, so it is the host module's memslot cost, not restore's;",
        "reading the state file, the vCPU/irqchip/clock ioctls and the threads take ~1–2 ms. The",
        "minimum over the runs is the figure least disturbed by the other jobs on the machine.",
        "",
        "Commands:",
        "",
        "```",
        f"benches/restore_tiny.py --runs {runs} --memory {memory} --write",
        "# source: " + " ".join(boot_cmd) + "  (then `kapsel vm pause`, `kapsel vm snapshot DIR`)",
        "# each run: " + " ".join(restore_cmd),
        "```",
        "",
    ])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--memory", default="256M")
    ap.add_argument("--cpus", type=int, default=1)
    ap.add_argument("--kapsel", help="kapsel binary (default: cargo build --release)")
    ap.add_argument("--guest", help="test-guest-pvh ELF (default: scripts/build-test-guest.sh)")
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = ap.parse_args()
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        sys.exit("restore_tiny: /dev/kvm is not usable")
    kapsel = args.kapsel or release_kapsel()
    guest = args.guest or build_test_guest("restore_tiny")
    load_before = os.getloadavg()[0]
    work = tempfile.mkdtemp(prefix="kapsel-restore-tiny-")
    try:
        snap, boot_cmd = make_snapshot(kapsel, guest, args.memory, args.cpus, work)
        snap_kib = int(subprocess.run(["du", "-k", os.path.join(snap, "memory")],
                                      stdout=subprocess.PIPE, text=True, check=True)
                       .stdout.split()[0])
        one_restore(kapsel, snap)  # warm-up (page cache), not counted
        vmm, wall, count = [], [], []
        restore_cmd = []
        for _ in range(args.runs):
            v, w, c, restore_cmd = one_restore(kapsel, snap)
            vmm.append(v)
            wall.append(w)
            count.append(c)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report(vmm, wall, count, args.runs, args.memory, args.cpus, boot_cmd, restore_cmd,
                  snap_kib, (load_before, os.getloadavg()[0]))
    print(text)
    if args.write:
        write_subsection(SECTION, SUBSECTION, text)


if __name__ == "__main__":
    main()
