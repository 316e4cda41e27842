#!/usr/bin/env python3
"""Property-based API fuzzing of `kapsel daemon` with schemathesis against docs/api/daemon.yaml.

Starts a daemon inside a fresh network namespace (`unshare -n`, so networks it is asked to
create never touch the host), exposes its UNIX socket on 127.0.0.1 through a small proxy,
and runs `st run` with the `not_a_server_error` check (no 5xx, no dropped connection) plus
response schema conformance. Cleans up every process it started.

    python3 crates/daemon/tests/schemathesis.py [--st /path/to/st] [--kapsel PATH] [-n 50]

Needs root and schemathesis (scripts/schemathesis-venv.sh installs it; scripts/test.sh runs
this). Exit status: st's, or 1 when the daemon died.
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def proxy(listen, target):
    def pipe(a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve():
        while True:
            client, _ = listen.accept()
            up = socket.socket(socket.AF_UNIX)
            try:
                up.connect(target)
            except OSError:
                client.close()
                continue
            threading.Thread(target=pipe, args=(client, up), daemon=True).start()
            threading.Thread(target=pipe, args=(up, client), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--st", default=shutil.which("st") or "st")
    p.add_argument("--kapsel", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "debug", "kapsel"))
    p.add_argument("-n", "--max-examples", type=int, default=50)
    args = p.parse_args()

    work = tempfile.mkdtemp(prefix="kapsel-st-")
    sock = os.path.join(work, "d.sock")
    cg = f"kapsel-st-{os.getpid()}"
    daemon = subprocess.Popen(
        ["unshare", "-n", args.kapsel, "daemon", "--state-dir", os.path.join(work, "state"),
         "--run-dir", os.path.join(work, "run"), "--socket", sock, "--cgroup-root", cg],
        stdout=open(os.path.join(work, "daemon.log"), "w"), stderr=subprocess.STDOUT)
    try:
        for _ in range(200):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        listen = socket.socket()
        listen.bind(("127.0.0.1", 0))
        listen.listen(64)
        port = listen.getsockname()[1]
        proxy(listen, sock)
        cmd = [args.st, "run", os.path.join(ROOT, "docs", "api", "daemon.yaml"),
               "--url", f"http://127.0.0.1:{port}",
               "--checks", "not_a_server_error,response_schema_conformance,status_code_conformance",
               "--max-examples", str(args.max_examples), "--request-timeout", "30",
               # A followed event stream never ends by design; the rest is fuzzed.
               "--exclude-operation-id", "events"]
        print(" ".join(cmd), flush=True)
        rc = subprocess.call(cmd, cwd=work)  # st leaves .schemathesis/ in its cwd
        alive = daemon.poll() is None
        print(f"daemon still running after the run: {alive}")
        if not alive:
            with open(os.path.join(work, "daemon.log")) as log:
                print("daemon log (end):\n" + "".join(log.readlines()[-30:]))
        return rc if alive else 1
    finally:
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        # dnsmasq instances started for fuzzed networks, and any VMMs.
        for root, _, files in os.walk(os.path.join(work, "state", "networks")):
            if "dnsmasq.pid" in files:
                try:
                    os.kill(int(open(os.path.join(root, "dnsmasq.pid")).read()), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
        for c in ["cpu", "cpuacct", "cpuset", "memory", "pids", "blkio"]:
            base = f"/sys/fs/cgroup/{c}/{cg}"
            if os.path.isdir(base):
                for d in os.listdir(base):
                    path = os.path.join(base, d)
                    if os.path.isdir(path):
                        for pid in open(os.path.join(path, "cgroup.procs")).read().split():
                            try:
                                os.kill(int(pid), signal.SIGKILL)
                            except OSError:
                                pass
                        time.sleep(0.1)
                        try:
                            os.rmdir(path)
                        except OSError:
                            pass
                try:
                    os.rmdir(base)
                except OSError:
                    pass
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
