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
import datetime
import os
import platform
import select
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = b"TEST-GUEST-READY"
SECTION = "## Tiny guest boot"
TARGETS = {"time_ratio": 0.12, "rss_mib": 4.0}


def build_guest():
    """Runs scripts/build-test-guest.sh; returns the PVH ELF path."""
    out = subprocess.run(
        [os.path.join(ROOT, "scripts", "build-test-guest.sh")],
        check=True, stdout=subprocess.PIPE, text=True,
    ).stdout.split()
    pvh = [p for p in out if p.endswith("test-guest-pvh")]
    if not pvh:
        sys.exit("boot_tiny: build-test-guest.sh printed no test-guest-pvh path")
    return pvh[0]


def build_kapsel():
    """Builds kapsel in release mode; returns the binary path."""
    subprocess.run(
        ["cargo", "build", "--quiet", "--release", "-p", "kapsel"],
        check=True, cwd=ROOT,
    )
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "release", "kapsel")


def vm_rss_kib(pid):
    """VmRSS of PID in KiB, or None if the process is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


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


def pct(values, p):
    """Nearest-rank percentile (p in 0..100)."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


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
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        SECTION,
        "",
        f"Spawn to `TEST-GUEST-READY` on stdout for the no_std test guest (`test=hello`, PVH entry, 128 MiB),",
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


def write_section(text):
    path = os.path.join(ROOT, "BENCHMARKS.md")
    try:
        with open(path) as f:
            old = f.read()
    except FileNotFoundError:
        old = "# Benchmarks\n\n"
    start = old.find(SECTION + "\n")
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(SECTION))
        rest = old[end + 1:] if end >= 0 else ""
        new = old[:start] + text + ("\n" + rest if rest else "")
    with open(path, "w") as f:
        f.write(new.rstrip("\n") + "\n")
    print(f"boot_tiny: wrote {SECTION!r} to {path}", file=sys.stderr)


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
    guest = args.guest or build_guest()
    kapsel = args.kapsel or build_kapsel()
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
        write_section(text)


if __name__ == "__main__":
    main()
