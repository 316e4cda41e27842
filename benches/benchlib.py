"""Helpers every benchmark script shares: building what it measures, reading process
memory, percentiles, and replacing its section of BENCHMARKS.md."""

import datetime
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "BENCHMARKS.md")


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def build_test_guest(tag):
    """Runs scripts/build-test-guest.sh; returns the PVH ELF path."""
    out = subprocess.run(
        [os.path.join(ROOT, "scripts", "build-test-guest.sh")],
        check=True, stdout=subprocess.PIPE, text=True,
    ).stdout.split()
    pvh = [p for p in out if p.endswith("test-guest-pvh")]
    if not pvh:
        sys.exit(f"{tag}: build-test-guest.sh printed no test-guest-pvh path")
    return pvh[0]


def release_kapsel(build=True):
    """The release kapsel binary (built first unless build=False)."""
    if build:
        subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "kapsel"],
                       check=True, cwd=ROOT)
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


def pct(values, p):
    """Nearest-rank percentile (p in 0..100)."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def _read_benchmarks():
    try:
        with open(BENCHMARKS) as f:
            return f.read()
    except FileNotFoundError:
        return "# Benchmarks\n\n"


def _write_benchmarks(text, what):
    with open(BENCHMARKS, "w") as f:
        f.write(text.rstrip("\n") + "\n")
    print(f"bench: wrote {what!r} to {BENCHMARKS}", file=sys.stderr)


def write_section(section, text):
    """Replaces SECTION (its heading line up to the next `## `) with TEXT, which starts
    with that heading; appends it when the file has no such section."""
    old = _read_benchmarks()
    start = old.find(section + "\n")
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(section))
        rest = old[end + 1:] if end >= 0 else ""
        new = old[:start] + text + ("\n" + rest if rest else "")
    _write_benchmarks(new, section)


def write_subsection(section, subsection, text):
    """Replaces SUBSECTION (`### …`) inside SECTION with TEXT, appending it to the section
    (or the section to the file) when missing."""
    old = _read_benchmarks()
    start = old.find(section + "\n")
    if start < 0:
        write_section(section, section + "\n\n" + text)
        return
    end = old.find("\n## ", start + len(section))
    end = len(old) if end < 0 else end + 1
    body = old[start:end]
    sub = body.find(subsection + "\n")
    if sub < 0:
        body = body.rstrip("\n") + "\n\n" + text + "\n"
    else:
        sub_end = body.find("\n### ", sub + len(subsection))
        tail = body[sub_end + 1:] if sub_end >= 0 else ""
        body = body[:sub] + text + ("\n" + tail if tail else "\n")
    _write_benchmarks(old[:start] + body + old[end:], subsection)
