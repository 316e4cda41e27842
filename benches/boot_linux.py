#!/usr/bin/env python3
"""Linux boot benchmark in the test bed: kapsel vs QEMU microvm, same kernel + initramfs.

Inside ONE test-bed L1 (QEMU TCG -> L1 Linux with KVM, see scripts/testbed.sh), interleaved
runs (kapsel, QEMU, kapsel, ...) boot the L2 guest kernel (bzImage, and the ELF vmlinux) with
the busybox initramfs to its `GUEST-READY` line. Time: from the VMM's fork in L1 to the
marker on its stdout, measured in L1 by a tiny static helper (`kt`, C source below, built
here with gcc -static) that reads CLOCK_MONOTONIC; the VMM is killed at the marker.

QEMU is Debian's qemu-system-x86_64 (copied into L1 with its libraries) with `-M microvm`
and the firmware/option ROMs microvm loads for `-kernel` (bios-microvm.bin = qboot,
linuxboot_dma.bin for bzImage, pvh.bin for an ELF with a PVH note); `-L /usr/share/qemu`
because the copied binary in L1's /bin would look for them in /share/qemu. QEMU runs with its
default CPU model: `-cpu host` made its guest boot about twice as slow in the test bed.

Prints medians and the kapsel/QEMU ratio; `--write` replaces the `## Linux boot (test bed)`
section of BENCHMARKS.md. Python 3 standard library only.

    benches/boot_linux.py [--runs 10] [--write]
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import ROOT, utc_now, write_section  # noqa: E402,F401  (bl.* for other benches)

SECTION = "## Linux boot (test bed)"
TARGET_RATIO = 0.5
CMDLINE = "console=ttyS0 reboot=k panic=-1 rdinit=/init quiet"
QEMU_FILES = ["bios-microvm.bin", "linuxboot_dma.bin", "pvh.bin", "kvmvapic.bin"]

# A timing helper for L1 (busybox userspace, no python): static C, built on the host.
KT_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (long long)t.tv_sec * 1000000LL + t.tv_nsec / 1000;
}

/* HMP: connect, read to the prompt; send a command, return the text up to the next prompt */
static int hmp_connect(const char *path) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  strncpy(a.sun_path, path, sizeof a.sun_path - 1);
  if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  return fd;
}
static char hbuf[1 << 16];
static const char *hmp_read(int fd) {
  size_t n = 0;
  hbuf[0] = 0;
  for (;;) {
    ssize_t r = read(fd, hbuf + n, sizeof hbuf - 1 - n);
    if (r <= 0) return NULL;
    n += r;
    hbuf[n] = 0;
    if (strstr(hbuf, "(qemu) ")) return hbuf;
    if (n >= sizeof hbuf - 1) n = 0;
  }
}
static const char *hmp(int fd, const char *cmd) {
  dprintf(fd, "%s\n", cmd);
  return hmp_read(fd);
}

/* kt hmp SOCKET CMD [POLLCMD DONE TIMEOUT_S]: run CMD; optionally repeat POLLCMD until its
   answer holds DONE; prints KT-HMP us=N and the last answer */
static int cmd_hmp(int argc, char **argv) {
  if (argc < 2) return 2;
  int fd = hmp_connect(argv[0]);
  if (fd < 0 || !hmp_read(fd)) { fprintf(stderr, "kt: cannot reach %s\n", argv[0]); return 1; }
  long long t0 = now_us();
  const char *r = hmp(fd, argv[1]);
  if (argc >= 5) {
    long long deadline = t0 + atoll(argv[4]) * 1000000LL;
    while (r && !strstr(r, argv[3]) && !strstr(r, "failed") && now_us() < deadline) {
      usleep(2000);
      r = hmp(fd, argv[2]);
    }
  }
  printf("KT-HMP us=%lld\n%s\n", now_us() - t0, r ? r : "(no answer)");
  return r ? 0 : 1;
}

/* kt mark [-q] [-k] [-c MONITOR] -m MARKER [-m MARKER]... TIMEOUT_S CMD ARGS...
   Runs CMD with stdout+stderr on a pipe, prints KT-MARK i=I us=N when marker I first shows,
   KT-END rc=N us=N at the end. -k: kill CMD once every marker showed. -q: do not copy the
   output. -c: once the HMP socket MONITOR answers and the VM is paused after an incoming
   migration, send `cont` (prints KT-CONT us=N). */
static int cmd_mark(int argc, char **argv) {
  const char *markers[8];
  int nm = 0, quiet = 0, kill_at_end = 0, i;
  const char *mon = NULL;
  while (argc > 0 && argv[0][0] == '-') {
    if (!strcmp(argv[0], "-q")) quiet = 1;
    else if (!strcmp(argv[0], "-k")) kill_at_end = 1;
    else if (!strcmp(argv[0], "-m") && argc > 1 && nm < 8) { markers[nm++] = argv[1]; argc--; argv++; }
    else if (!strcmp(argv[0], "-c") && argc > 1) { mon = argv[1]; argc--; argv++; }
    else return 2;
    argc--; argv++;
  }
  if (argc < 2 || nm == 0) return 2;
  long long timeout = atoll(argv[0]) * 1000000LL;
  int p[2];
  if (pipe(p)) return 1;
  long long t0 = now_us();
  pid_t pid = fork();
  if (pid == 0) {
    dup2(p[1], 1); dup2(p[1], 2); close(p[0]); close(p[1]);
    execvp(argv[1], argv + 1);
    _exit(127);
  }
  close(p[1]);
  int seen[8] = {0}, nseen = 0, cont_sent = (mon == NULL), mfd = -1;
  char buf[65536], tail[512] = "";
  for (;;) {
    long long left = t0 + timeout - now_us();
    if (left <= 0) { printf("KT-TIMEOUT us=%lld\n", now_us() - t0); kill(pid, SIGKILL); break; }
    struct pollfd pf = {.fd = p[0], .events = POLLIN};
    int wait_ms = cont_sent ? (int)(left / 1000) + 1 : 5; /* poll the monitor every 5 ms */
    int r = poll(&pf, 1, wait_ms);
    if (!cont_sent) {
      if (mfd < 0 && (mfd = hmp_connect(mon)) >= 0 && !hmp_read(mfd)) { close(mfd); mfd = -1; }
      if (mfd >= 0) {
        const char *s = hmp(mfd, "info status");
        if (s && strstr(s, "paused") && !strstr(s, "inmigrate")) {
          hmp(mfd, "cont");
          printf("KT-CONT us=%lld\n", now_us() - t0);
          cont_sent = 1;
        }
      }
    }
    if (r <= 0) continue;
    ssize_t n = read(p[0], buf, sizeof buf - 1);
    if (n <= 0) break;
    buf[n] = 0;
    if (!quiet) { fwrite(buf, 1, n, stdout); fflush(stdout); }
    /* look for markers in tail+buf (markers may straddle reads); NULs end the search early,
       which only delays a marker to the next read */
    size_t tl = strlen(tail);
    char *join = malloc(tl + n + 1);
    memcpy(join, tail, tl); memcpy(join + tl, buf, n); join[tl + n] = 0;
    for (i = 0; i < nm; i++)
      if (!seen[i] && strstr(join, markers[i])) {
        seen[i] = 1; nseen++;
        printf("\nKT-MARK i=%d us=%lld\n", i, now_us() - t0); fflush(stdout);
      }
    size_t jl = tl + n, keep = jl < sizeof tail - 1 ? jl : sizeof tail - 1;
    memcpy(tail, join + jl - keep, keep); tail[keep] = 0;
    free(join);
    if (nseen == nm && kill_at_end) { kill(pid, SIGKILL); break; }
  }
  int st = 0;
  waitpid(pid, &st, 0);
  printf("KT-END rc=%d us=%lld\n", WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), now_us() - t0);
  return nseen == nm ? 0 : 1;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc >= 2 && !strcmp(argv[1], "now")) { printf("%lld\n", now_us()); return 0; }
  if (argc >= 2 && !strcmp(argv[1], "mark")) return cmd_mark(argc - 2, argv + 2);
  if (argc >= 2 && !strcmp(argv[1], "hmp")) return cmd_hmp(argc - 2, argv + 2);
  fprintf(stderr, "usage: kt now | kt mark ... | kt hmp ...\n");
  return 2;
}
"""


def build_kt(workdir):
    """Compiles the helper statically; returns its path (named `kt`)."""
    src = os.path.join(workdir, "kt.c")
    out = os.path.join(workdir, "kt")
    with open(src, "w") as f:
        f.write(KT_C)
    subprocess.run(["gcc", "-O2", "-static", "-Wall", "-o", out, src], check=True)
    return out


def static_kapsel():
    """$KAPSEL_STATIC_BIN, or a static release build into target/static (like test-infra)."""
    env_bin = os.environ.get("KAPSEL_STATIC_BIN")
    if env_bin:
        return env_bin
    target_dir = os.path.join(ROOT, "target", "static")
    env = dict(os.environ, RUSTFLAGS="-C target-feature=+crt-static")
    subprocess.run(
        ["cargo", "build", "--quiet", "--release", "--target", "x86_64-unknown-linux-gnu",
         "-p", "kapsel", "--target-dir", target_dir],
        check=True, cwd=ROOT, env=env,
    )
    return os.path.join(target_dir, "x86_64-unknown-linux-gnu", "release", "kapsel")


def guest_dir():
    d = os.environ.get("KAPSEL_GUEST_DIR")
    if d:
        return d
    out = subprocess.run([os.path.join(ROOT, "scripts", "guest-artifacts.sh")],
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    return out.strip().splitlines()[-1]


def qemu_files(qemu_bin):
    """-b/-f arguments that bring QEMU and the ROMs microvm loads into L1."""
    args = ["-b", qemu_bin]
    for name in QEMU_FILES:
        src = os.path.join("/usr/share/qemu", name)
        if not os.path.exists(src):
            src = os.path.join("/usr/share/seabios", name)
        args += ["-f", f"{src}:/usr/share/qemu/{name}"]
    return args


def run_testbed(args, scenario, timeout, log_name, from_log=None):
    """Runs scripts/testbed.sh with ARGS and SCENARIO; returns the
    output and the command. FROM_LOG: take the output of an earlier run's log instead."""
    if from_log:
        with open(from_log, errors="replace") as f:
            out = f.read()
        cmd = [os.path.join(ROOT, "scripts", "testbed.sh"), "-s", "SCENARIO", "-o", from_log,
               "-t", str(timeout)] + args
        return out, cmd
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as f:
        f.write(scenario)
        script = f.name
    log = os.path.join(tempfile.gettempdir(), log_name)
    cmd = [os.path.join(ROOT, "scripts", "testbed.sh"), "-s", script, "-o", log,
           "-t", str(timeout)] + args
    print("bench: " + " ".join(cmd), file=sys.stderr)
    # testbed.sh serialises runs itself (flock on /tmp/kapsel-testbed.lock): TCG wants every core
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              errors="replace")
    finally:
        os.unlink(script)
    print(proc.stdout[-3000:], file=sys.stderr)
    if proc.returncode != 0:
        sys.exit(f"bench: test bed failed (rc {proc.returncode}); log {log}")
    return proc.stdout, cmd


def kv(line):
    """`A x=1 y=2` -> {'x': '1', 'y': '2'}"""
    return dict(w.split("=", 1) for w in line.split() if "=" in w)


def ms(values):
    return statistics.median(values) / 1000.0


def host_kvm():
    """This machine in one phrase: CPU model, cores, and which KVM module serves /dev/kvm."""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    kvm = "kvm_pvm" if os.path.exists("/sys/module/kvm_pvm") else "kvm"
    return f"{os.cpu_count()} × {cpu}, /dev/kvm from {kvm}"


def vmm_commands(kernel, memory, cpus):
    """The two VMM command lines (in L1) booting KERNEL with the initramfs."""
    kapsel = (f"kapsel run --kernel {kernel} --initrd initramfs.cpio.gz "
              f"--cmdline '{CMDLINE}' --cpus {cpus} --memory {memory}")
    qemu = (f"qemu-system-x86_64 -L /usr/share/qemu -M microvm -enable-kvm -smp {cpus} -m {memory} "
            f"-nodefaults -no-user-config -display none -serial stdio "
            f"-kernel {kernel} -initrd initramfs.cpio.gz -append '{CMDLINE}'")
    return {"kapsel": kapsel, "qemu": qemu}


def scenario(runs, kernels, memory, cpus):
    lines = ["echo BENCH-START"]
    for kernel in kernels:
        cmds = vmm_commands(kernel, memory, cpus)
        # one warm-up each (page cache, first-touch), not counted
        for vmm, cmd in cmds.items():
            lines.append(f"kt mark -q -k -m GUEST-READY 120 {cmd} </dev/null >/dev/null 2>&1")
        lines.append(f"for i in $(seq {runs}); do")
        for vmm, cmd in cmds.items():
            lines.append(f"  r=$(kt mark -q -k -m GUEST-READY 120 {cmd} </dev/null | tr '\\n' ' ')")
            lines.append(f"  echo \"BENCH kernel={kernel} vmm={vmm} run=$i $r\"")
        lines.append("done")
    lines.append("echo BENCH-DONE")
    return "\n".join(lines) + "\n"


def parse(output):
    """{(kernel, vmm): [us, ...]}; runs without a marker are kept as None."""
    res = {}
    for line in output.splitlines():
        if not line.startswith("BENCH kernel="):
            continue
        f = kv(line)
        mark = re.search(r"KT-MARK i=0 us=(\d+)", line)
        res.setdefault((f["kernel"], f["vmm"]), []).append(int(mark.group(1)) if mark else None)
    return res


def report(res, runs, memory, cpus, cmd, kernels):
    lines = [
        SECTION,
        "",
        f"Linux 6.1 (`bzImage`, and the ELF `vmlinux`) with the busybox initramfs to `GUEST-READY`, "
        f"{cpus} vCPU, {memory}, `{CMDLINE}`:",
        "time from the VMM's fork in L1 to the marker on its stdout (CLOCK_MONOTONIC in L1, helper `kt`),",
        f"{runs} runs each, interleaved kapsel/QEMU, one warm-up run each not counted, all inside ONE",
        "test-bed L1 (QEMU TCG `-cpu max` with emulated SVM → L1 Linux 6.1 with kvm_amd → L2).",
        "Absolute times are inflated by the nested TCG emulation; the ratio is the result.",
        f"Measured {utc_now()}.",
        "",
        "| kernel | VMM | runs | median (ms) | min (ms) | max (ms) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    ratios = []
    for kernel in kernels:
        med = {}
        for vmm, label in [("kapsel", "kapsel"), ("qemu", "QEMU `-M microvm`")]:
            vals = [v for v in res.get((kernel, vmm), []) if v is not None]
            fails = len(res.get((kernel, vmm), [])) - len(vals)
            if not vals:
                lines.append(f"| {kernel} | {label} | 0 | no run reached the marker | | |")
                continue
            med[vmm] = ms(vals)
            note = f" ({fails} without marker)" if fails else ""
            lines.append(f"| {kernel} | {label} | {len(vals)}{note} | {med[vmm]:.1f} | "
                         f"{min(vals) / 1000:.1f} | {max(vals) / 1000:.1f} |")
        if "kapsel" in med and "qemu" in med:
            r = med["kapsel"] / med["qemu"]
            ratios.append((kernel, r))
            lines.append(f"| {kernel} | **kapsel / QEMU** | | **{r:.2f}×** | | |")
    lines.append("")
    for kernel, r in ratios:
        verdict = "meets" if r <= TARGET_RATIO else "misses"
        lines.append(f"Target kapsel ≤ {TARGET_RATIO}× QEMU: {kernel} {verdict} ({r:.2f}×).")
    lines += ["", "Command (host):", "", "```", "benches/boot_linux.py --runs {} --write".format(runs),
              "# runs: " + " ".join(cmd), "```", "", "VMM command lines in L1:", "", "```"]
    for kernel in kernels:
        for cmdline in vmm_commands(kernel, memory, cpus).values():
            lines.append(f"kt mark -q -k -m GUEST-READY 120 {cmdline}")
    lines += ["```", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--memory", default="256M")
    ap.add_argument("--cpus", type=int, default=1)
    ap.add_argument("--kernels", default="bzImage,vmlinux")
    ap.add_argument("--qemu", default="/usr/bin/qemu-system-x86_64")
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    ap.add_argument("--from-log", help="report from the L1 log of an earlier run (testbed.sh -o)")
    args = ap.parse_args()
    kernels = args.kernels.split(",")

    gd = guest_dir()
    work = tempfile.mkdtemp(prefix="kapsel-bench-")
    kt = build_kt(work)
    tb_args = ["-k", os.path.join(gd, "host", "bzImage"), "-b", static_kapsel(), "-b", kt,
               "-f", os.path.join(gd, "initramfs-busybox.cpio.gz") + ":initramfs.cpio.gz"]
    tb_args += qemu_files(args.qemu)
    for k in kernels:
        tb_args += ["-f", os.path.join(gd, k) + ":" + k]
    out, cmd = run_testbed(tb_args, scenario(args.runs, kernels, args.memory, args.cpus),
                           timeout=3600, log_name="kapsel-bench-boot-linux.log",
                           from_log=args.from_log)
    res = parse(out)
    text = report(res, args.runs, args.memory, args.cpus, cmd, kernels)
    print(text)
    if args.write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
