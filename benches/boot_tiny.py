#!/usr/bin/env python3
"""Tiny-guest boot benchmark: kapsel vs QEMU microvm on the same PVH test guest.

Interleaved runs (kapsel, QEMU, kapsel, ...) of the no_std test guest with `test=hello`.
For each run: the time from spawning the VMM to the `TEST-GUEST-READY` line on its stdout,
and the VMM's VmRSS (/proc/PID/status) sampled at that moment; then the process is killed.
Prints medians, p90 and the kapsel/QEMU ratio as a Markdown table; `--write` replaces the
`## Tiny guest boot` section of BENCHMARKS.md (creating the file if needed).

Python 3 standard library only. Run from anywhere:  benches/boot_tiny.py [--runs 20] [--write]
"""

import argparse
import os
import platform
import select
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import ROOT, build_test_guest, pct, release_kapsel, utc_now, vm_rss_kib, write_section  # noqa: E402

MARKER = b"TEST-GUEST-READY"
SECTION = "## Tiny guest boot"
TARGETS = {"time_ratio": 0.12, "rss_mib": 4.0}


def one_run(cmd, timeout):
    """Spawns CMD, waits for the marker; returns (seconds, rss_kib) or raises."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    fd = proc.stdout.fileno()
    seen = b""
    try:
        deadline = t0 + timeout
        while MARKER not in seen:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise RuntimeError(f"no {MARKER.decode()} within {timeout}s: {' '.join(cmd)}")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"exited (code {proc.wait()}) before the marker: {' '.join(cmd)}")
            seen = seen[-64:] + chunk
        elapsed = time.perf_counter() - t0
        rss = vm_rss_kib(proc.pid)
        return elapsed, rss
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()


def summarize(samples):
    times = [t * 1000.0 for t, _ in samples]
    rss = [r / 1024.0 for _, r in samples if r is not None]
    return {
        "runs": len(samples),
        "t_med": statistics.median(times),
        "t_p90": pct(times, 90),
        "rss_med": statistics.median(rss) if rss else float("nan"),
        "rss_p90": pct(rss, 90) if rss else float("nan"),
        "rss_n": len(rss),
    }


def host_line():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    kvm = "kvm_pvm" if os.path.exists("/sys/module/kvm_pvm") else "kvm"
    load = os.getloadavg()[0]
    return (f"{platform.node()}: Linux {platform.release()}, {os.cpu_count()} CPUs ({cpu}), "
            f"/dev/kvm from {kvm}, load average {load:.1f} at the start")


def show(cmd):
    """A command line with paths inside the repository made relative to it."""
    return " ".join(a[len(ROOT) + 1:] if a.startswith(ROOT + "/") else a for a in cmd)


def report(k, q, kapsel_cmd, qemu_cmd, runs, host):
    ratio_t = k["t_med"] / q["t_med"]
    ratio_r = k["rss_med"] / q["rss_med"]
    ok_t = "meets" if ratio_t <= TARGETS["time_ratio"] else "misses"
    ok_r = "meets" if k["rss_med"] <= TARGETS["rss_mib"] else "misses"
    now = utc_now()
    lines = [
        SECTION,
        "",
        "Spawn to `TEST-GUEST-READY` on stdout for the no_std test guest (`test=hello`, PVH entry, 128 MiB),",
        f"and the VMM's VmRSS sampled at that moment. {runs} runs each, interleaved. Measured {now}",
        f"on {host}.",
        "",
        "| VMM | runs | median boot (ms) | p90 boot (ms) | median VmRSS (MiB) | p90 VmRSS (MiB) |",
        "|---|---:|---:|---:|---:|---:|",
        f"| kapsel | {k['runs']} | {k['t_med']:.2f} | {k['t_p90']:.2f} | {k['rss_med']:.2f} | {k['rss_p90']:.2f} |",
        f"| QEMU microvm | {q['runs']} | {q['t_med']:.2f} | {q['t_p90']:.2f} | {q['rss_med']:.2f} | {q['rss_p90']:.2f} |",
        f"| kapsel / QEMU | | {ratio_t:.3f}× | {k['t_p90'] / q['t_p90']:.3f}× | {ratio_r:.3f}× | |",
        "",
        f"Targets: boot ≤ {TARGETS['time_ratio']}× QEMU's ({ok_t}: {ratio_t:.3f}×), "
        f"RSS ≤ {TARGETS['rss_mib']:.0f} MiB ({ok_r}: {k['rss_med']:.2f} MiB).",
    ]
    if k["rss_n"] < k["runs"] or q["rss_n"] < q["runs"]:
        lines.append(
            f"RSS samples: kapsel {k['rss_n']}/{k['runs']}, QEMU {q['rss_n']}/{q['runs']} "
            "(a run that had already exited at the marker has none)."
        )
    lines += [
        "",
        "Commands (`benches/boot_tiny.py --runs {} --write`):".format(runs),
        "",
        "```",
        show(kapsel_cmd),
        show(qemu_cmd),
        "```",
        "",
    ]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=20, help="runs per VMM (default 20)")
    ap.add_argument("--kapsel", help="kapsel binary (default: build it with cargo --release)")
    ap.add_argument("--guest", help="test-guest-pvh ELF (default: scripts/build-test-guest.sh)")
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--memory", default="128M")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per run")
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = ap.parse_args()

    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        sys.exit("boot_tiny: /dev/kvm is not usable")
    guest = args.guest or build_test_guest("boot_tiny")
    kapsel = args.kapsel or release_kapsel()
    kapsel_cmd = [kapsel, "run", "--kernel", guest, "--cmdline", "test=hello", "--memory", args.memory]
    qemu_cmd = [
        args.qemu, "-M", "microvm,x-option-roms=off,rtc=on", "-accel", "kvm", "-m", args.memory,
        "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
        "-kernel", guest, "-append", "test=hello",
    ]
    host = host_line()
    # One warm-up run each (page cache, lazy binding), not counted.
    one_run(kapsel_cmd, args.timeout)
    one_run(qemu_cmd, args.timeout)
    ks, qs = [], []
    for i in range(args.runs):
        ks.append(one_run(kapsel_cmd, args.timeout))
        qs.append(one_run(qemu_cmd, args.timeout))
        print(f"run {i + 1}/{args.runs}: kapsel {ks[-1][0] * 1000:.2f} ms, "
              f"qemu {qs[-1][0] * 1000:.2f} ms", file=sys.stderr)
    text = report(summarize(ks), summarize(qs), kapsel_cmd, qemu_cmd, args.runs, host)
    print(text)
    if args.write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
