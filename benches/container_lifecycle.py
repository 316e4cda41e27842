#!/usr/bin/env python3
"""Container lifecycle benchmark: create + start + wait + delete of /bin/true.

kapsel (both `kapsel oci`, the full CLI, and `kapsel-oci`, the lean runtime binary), crun
and runc run the same busybox bundle (as `runc spec` writes it, pointed at
the busybox rootfs, no terminal), interleaved in a shuffled order each round. Reports the
median and p90 wall time of the whole cycle, the ratio to crun, and the runtime processes'
peak RSS (max over the create/start/delete invocations, from wait4).

Needs root, runc and crun (apt-get install runc crun), and a kapsel binary
(default target/release/kapsel). On hybrid-cgroup hosts crun refuses to run while the
unified hierarchy is mounted, so the whole benchmark re-executes itself in a private
mount namespace with /sys/fs/cgroup/unified unmounted; all three runtimes see the same view.

    sudo python3 benches/container_lifecycle.py [--rounds 60] [--kapsel PATH]
"""

import argparse
import ctypes
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

PR_SET_CHILD_SUBREAPER = 36
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd):
    """Runs cmd, returns (rc, max_rss_kib, stderr).

    The peak RSS comes from GNU time (`%M`): a child forked from this Python process would
    report Python's own RSS, which it had until its exec. stderr goes to a file, not a pipe:
    the container inherits it and would hold a pipe open.
    """
    with tempfile.NamedTemporaryFile() as rssf, tempfile.TemporaryFile() as errf:
        rc = subprocess.call(["/usr/bin/time", "-q", "-f", "%M", "-o", rssf.name] + cmd,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=errf)
        errf.seek(0)
        rss = int((open(rssf.name).read().strip().splitlines() or ["0"])[-1])
        return rc, rss, errf.read().decode(errors="replace")


def cycle(rt, argv, root, bundle, cid):
    """One create/start/wait/delete. Returns (seconds, max_rss_kib)."""
    pidfile = os.path.join(root, cid + ".pid")
    base = argv + ["--root", root]
    t0 = time.perf_counter()
    rc, rss1, err = run(base + ["create", "--bundle", bundle, "--pid-file", pidfile, cid])
    if rc != 0:
        raise RuntimeError(f"{rt} create failed: {err}")
    with open(pidfile) as f:
        pid = int(f.read().strip())
    rc, rss2, err = run(base + ["start", cid])
    if rc != 0:
        raise RuntimeError(f"{rt} start failed: {err}")
    # We are a child subreaper: the container's process was reparented to us.
    os.waitpid(pid, 0)
    rc, rss3, err = run(base + ["delete", cid])
    if rc != 0:
        raise RuntimeError(f"{rt} delete failed: {err}")
    dt = time.perf_counter() - t0
    os.unlink(pidfile)
    return dt, max(rss1, rss2, rss3)


def make_bundle(rootfs):
    bundle = tempfile.mkdtemp(prefix="kapsel-bench-bundle-")
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg["root"]["path"] = rootfs
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = ["/bin/true"]
    with open(path, "w") as f:
        json.dump(cfg, f, indent=1)
    return bundle


def inner(args):
    subprocess.run(["umount", "/sys/fs/cgroup/unified"], check=False)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit("prctl(PR_SET_CHILD_SUBREAPER) failed")
    rootfs = subprocess.run(
        ["bash", os.path.join(REPO, "scripts/container-rootfs.sh"), "busybox"],
        check=True, capture_output=True, text=True).stdout.strip()
    bundle = make_bundle(rootfs)
    runtimes = {
        "kapsel oci": [args.kapsel, "oci"],
        "kapsel-oci": [args.kapsel_oci],
        "crun": ["crun"],
        "runc": ["runc"],
    }
    roots = {rt: tempfile.mkdtemp(prefix=f"kapsel-bench-{rt.replace(' ', '-')}-")
             for rt in runtimes}
    times = {rt: [] for rt in runtimes}
    rss = {rt: [] for rt in runtimes}
    try:
        for i in range(args.warmup + args.rounds):
            order = list(runtimes)
            random.shuffle(order)
            for rt in order:
                cid = f"bench-{rt.replace(' ', '-')}-{i}"
                dt, peak = cycle(rt, runtimes[rt], roots[rt], bundle, cid)
                if i >= args.warmup:
                    times[rt].append(dt)
                    rss[rt].append(peak)
    finally:
        shutil.rmtree(bundle, ignore_errors=True)
        for r in roots.values():
            shutil.rmtree(r, ignore_errors=True)
    crun_med = statistics.median(times["crun"])
    result = {}
    for rt in runtimes:
        t = sorted(times[rt])
        result[rt] = {
            "median_ms": round(statistics.median(t) * 1e3, 2),
            "p90_ms": round(t[int(len(t) * 0.9) - 1] * 1e3, 2),
            "ratio_to_crun": round(statistics.median(t) / crun_med, 2),
            "max_rss_kib": statistics.median(rss[rt]),
        }
    print(json.dumps({"rounds": args.rounds, "results": result}, indent=1))
    print()
    print("| runtime | median | p90 | × crun | runtime max RSS |")
    print("| --- | --- | --- | --- | --- |")
    for rt, r in result.items():
        print(f"| {rt} | {r['median_ms']} ms | {r['p90_ms']} ms | {r['ratio_to_crun']} "
              f"| {r['max_rss_kib'] / 1024:.1f} MiB |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--kapsel", default=os.path.join(REPO, "target/release/kapsel"))
    ap.add_argument("--kapsel-oci", default=os.path.join(REPO, "target/release/kapsel-oci"),
                    help="the lean OCI runtime binary (cargo build --release -p container)")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root")
    for tool in ("runc", "crun", "/usr/bin/time"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt-get install -y runc crun time")
    for binary in (args.kapsel, args.kapsel_oci):
        if not os.access(binary, os.X_OK):
            sys.exit(f"{binary} not found: cargo build --release -p kapsel -p container")
    args.kapsel = os.path.abspath(args.kapsel)
    args.kapsel_oci = os.path.abspath(args.kapsel_oci)
    if args.inner:
        inner(args)
        return
    cmd = ["unshare", "-m", "--propagation", "private", sys.executable,
           os.path.abspath(__file__), "--inner", "--rounds", str(args.rounds),
           "--warmup", str(args.warmup), "--kapsel", args.kapsel,
           "--kapsel-oci", args.kapsel_oci]
    sys.exit(subprocess.call(cmd))


if __name__ == "__main__":
    main()
