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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import build_test_guest, pct, release_kapsel, vm_rss_kib, write_section  # noqa: E402

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


def run(args):
    guest = build_test_guest("daemon_launch")
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
        rss_mib = (vm_rss_kib(daemon.pid) or 0) / 1024
        cores = os.cpu_count() or 1
        result = {
            "guests": args.guests,
            "running": running,
            "single_ms": statistics.median(single) * 1000,
            "load": os.getloadavg()[0],
            "median_ms": statistics.median(lat) * 1000,
            "p90_ms": pct(lat, 90) * 1000,
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


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--guests", type=int, default=50)
    p.add_argument("--kapsel", default=release_kapsel(build=False))
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    r = run(args)
    text = table(r)
    print(text)
    if args.write:
        write_section(SECTION, f"{SECTION}\n\n{text}\n")


if __name__ == "__main__":
    main()
