#!/usr/bin/env python3
"""Daemon benchmark: 50 tiny guests launched in parallel through `kapsel daemon`.

Starts a daemon on a private state dir, imports the no_std test guest (payload `idle`, which
halts between 1 s heartbeats) and fires N `POST /v1/instances` requests at once from N
threads. For each: the launch-to-running latency (request sent -> 201 with status
`running`, which the daemon answers once the VMM has built the VM and opened its console
socket). Reports median/p90/max latency, the wall time for all N, launches per second per
host core, and the daemon's VmRSS with all N guests running; then deletes them all.
`--write` replaces the `## Daemon` section of BENCHMARKS.md.

Needs root and /dev/kvm. Python 3 standard library only.
    benches/daemon_launch.py [--guests 50] [--kapsel PATH] [--write]
"""

import argparse
import datetime
import http.client
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "## Daemon"
TARGET_LAUNCHES_PER_CORE = 5.0
TARGET_RSS_MIB = 30.0


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=120):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def call(sock, method, path, body=None):
    conn = UnixHTTPConnection(sock)
    data = json.dumps(body).encode() if body is not None else b""
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    text = resp.read()
    conn.close()
    return resp.status, (json.loads(text) if text else None)


def build_guest():
    out = subprocess.run(
        [os.path.join(ROOT, "scripts", "build-test-guest.sh")],
        check=True, stdout=subprocess.PIPE, text=True,
    ).stdout.split()
    return [p for p in out if p.endswith("test-guest-pvh")][0]


def default_kapsel():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "release", "kapsel")


def vm_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def percentile(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def run(args):
    guest = build_guest()
    work = tempfile.mkdtemp(prefix="kapsel-bench-")
    sock = os.path.join(work, "d.sock")
    cgroot = f"kapsel-bench-{os.getpid()}"
    log = open(os.path.join(work, "daemon.log"), "w")
    daemon = subprocess.Popen(
        [args.kapsel, "daemon", "--state-dir", os.path.join(work, "state"),
         "--run-dir", os.path.join(work, "run"), "--socket", sock, "--cgroup-root", cgroot],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log,
    )
    try:
        deadline = time.time() + 20
        while not os.path.exists(sock):
            if time.time() > deadline:
                sys.exit("daemon did not start")
            time.sleep(0.02)
        time.sleep(0.1)
        st, _ = call(sock, "POST", "/v1/images",
                     {"name": "tg", "kernel": guest, "cmdline": "console=ttyS0"})
        assert st == 201, st
        # One at a time first: the latency of a launch on an otherwise idle daemon.
        single = []
        for i in range(5):
            t0 = time.perf_counter()
            st, body = call(sock, "POST", "/v1/instances", {
                "name": f"s{i}", "image": "tg", "memory_mib": 64, "cmdline": "test=idle"})
            single.append(time.perf_counter() - t0)
            assert st == 201 and body["status"] == "running", (st, body)
            call(sock, "DELETE", f"/v1/instances/s{i}?force=true")
        lat = [None] * args.guests
        errors = []

        def launch(i):
            t0 = time.perf_counter()
            st, body = call(sock, "POST", "/v1/instances", {
                "name": f"b{i}", "image": "tg", "memory_mib": 64, "cmdline": "test=idle"})
            if st != 201 or body["status"] != "running":
                errors.append((i, st, body))
            lat[i] = time.perf_counter() - t0

        threads = [threading.Thread(target=launch, args=(i,)) for i in range(args.guests)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        if errors:
            sys.exit(f"launch errors: {errors[:3]}")
        st, lst = call(sock, "GET", "/v1/instances")
        running = sum(1 for i in lst if i["status"] == "running")
        time.sleep(1.0)
        rss_mib = vm_rss_kib(daemon.pid) / 1024
        cores = os.cpu_count() or 1
        result = {
            "guests": args.guests,
            "running": running,
            "single_ms": statistics.median(single) * 1000,
            "load": os.getloadavg()[0],
            "median_ms": statistics.median(lat) * 1000,
            "p90_ms": percentile(lat, 90) * 1000,
            "max_ms": max(lat) * 1000,
            "wall_s": wall,
            "per_sec_per_core": args.guests / wall / cores,
            "cores": cores,
            "rss_mib": rss_mib,
        }
        for i in range(args.guests):
            call(sock, "DELETE", f"/v1/instances/b{i}?force=true")
        return result
    finally:
        daemon.kill()
        daemon.wait()
        for c in ["cpu", "cpuacct", "cpuset", "memory", "pids", "blkio"]:
            root = f"/sys/fs/cgroup/{c}/{cgroot}"
            if os.path.isdir(root):
                for d in os.listdir(root):
                    if os.path.isdir(os.path.join(root, d)):
                        try:
                            os.rmdir(os.path.join(root, d))
                        except OSError:
                            pass
                try:
                    os.rmdir(root)
                except OSError:
                    pass
        shutil.rmtree(work, ignore_errors=True)


def table(r):
    ok = lambda good: "yes" if good else "no"
    return "\n".join([
        f"{r['guests']} tiny guests (no_std test guest, `test=idle`, 64 MiB) launched in parallel "
        f"through the daemon API on {r['cores']} host cores "
        f"({platform.node()}, {datetime.date.today()}, load average {r['load']:.1f} from other "
        f"work on the shared host); all {r['running']} reached `running`.",
        "",
        "| metric | value | target | met |",
        "|---|---|---|---|",
        f"| launch-to-running latency, one launch alone (median of 5) | {r['single_ms']:.0f} ms | | |",
        f"| launch-to-running latency in the burst of {r['guests']}, median | {r['median_ms']:.0f} ms | | |",
        f"| launch-to-running latency, p90 / max | {r['p90_ms']:.0f} / {r['max_ms']:.0f} ms | | |",
        f"| wall time for all {r['guests']} | {r['wall_s']:.2f} s | | |",
        f"| launches per second per core | {r['per_sec_per_core']:.1f} | >= {TARGET_LAUNCHES_PER_CORE} "
        f"| {ok(r['per_sec_per_core'] >= TARGET_LAUNCHES_PER_CORE)} |",
        f"| daemon RSS with {r['guests']} guests | {r['rss_mib']:.1f} MiB | <= {TARGET_RSS_MIB} MiB "
        f"| {ok(r['rss_mib'] <= TARGET_RSS_MIB)} |",
        "",
        "Running = the VMM process is in its cgroup, has built the VM and serves its console "
        "socket (the daemon's 201 waits for that). Reproduce: `benches/daemon_launch.py --write`.",
    ])


def write_section(text):
    path = os.path.join(ROOT, "BENCHMARKS.md")
    old = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    body = f"{SECTION}\n\n{text}\n"
    if SECTION in old:
        start = old.index(SECTION)
        rest = old[start + len(SECTION):]
        nxt = rest.find("\n## ")
        end = start + len(SECTION) + nxt + 1 if nxt >= 0 else len(old)
        new = old[:start] + body + ("\n" + old[end:] if nxt >= 0 else "")
    else:
        new = old.rstrip("\n") + "\n\n" + body
    open(path, "w").write(new)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--guests", type=int, default=50)
    p.add_argument("--kapsel", default=default_kapsel())
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    r = run(args)
    text = table(r)
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
