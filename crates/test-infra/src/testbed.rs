//! [`TestBed`]: one run of `scripts/testbed.sh` (QEMU TCG → L1 Linux with KVM → scenario).

use crate::paths::{error_chain, guest_dir, repo_root};
use crate::scenario::{self, Boot};
use crate::{kapsel_static_bin, Error};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Exit codes of `scripts/testbed.sh` that are the harness's, not the scenario's.
const RC_USAGE: i32 = 2;
const RC_TIMEOUT: i32 = 124;
const RC_NO_KVM: i32 = 125;
const RC_NO_INIT: i32 = 126;
/// Attempts of one run: a hang is retried once, early deaths of L1 twice.
const MAX_ATTEMPTS: u32 = 3;

/// A scenario to run in the test bed. Build it, then [`TestBed::run`].
#[derive(Debug, Clone)]
pub struct TestBed {
    name: String,
    kernel: Option<PathBuf>,
    binaries: Vec<PathBuf>,
    files: Vec<(PathBuf, String)>,
    scenario: String,
    cpus: u32,
    memory: String,
    timeout: Duration,
}

/// What a test-bed run produced.
#[derive(Debug, Clone)]
pub struct TestBedRun {
    /// The whole L1 console (harness markers, scenario output, L2 consoles).
    pub output: String,
    /// The scenario's exit code.
    pub code: i32,
    /// 1, or 2 when the first attempt timed out.
    pub attempts: u32,
    /// Host wall time of the successful attempt.
    pub elapsed: Duration,
    /// A copy of the L1 console on disk, for post-mortems.
    pub log: PathBuf,
}

impl TestBedRun {
    /// The harness's last line, `NESTED-RESULT: rc=… l1_init=…s kvm_ready=…s script=…s total=…s`.
    pub fn result_line(&self) -> Option<&str> {
        self.output
            .lines()
            .rev()
            .find(|l| l.starts_with("NESTED-RESULT:"))
    }

    /// The guests the scenario booted with the [`scenario::PRELUDE`] functions.
    pub fn boots(&self) -> Vec<Boot> {
        scenario::boots(&self.output)
    }

    /// The boot called `name`.
    ///
    /// # Panics
    /// When the scenario did not run it (the panic shows the end of the output).
    pub fn boot(&self, name: &str) -> Boot {
        self.boots()
            .into_iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no boot {name} in the test-bed output:\n{}", self.tail(60)))
    }

    /// The last `n` lines of the output.
    pub fn tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.output.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// Appends `NAME: NESTED-RESULT… | boot=seconds…` to `$KAPSEL_TESTBED_TIMINGS` when set
/// (`scripts/test.sh` prints that file at the end). Best effort: timings are not a result.
fn record_timing(name: &str, run: &TestBedRun) {
    let Some(path) = std::env::var_os("KAPSEL_TESTBED_TIMINGS") else {
        return;
    };
    let line = timing_line(name, run);
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
    if let Err(e) = written {
        eprintln!("cannot append to {}: {e}", PathBuf::from(path).display());
    }
}

fn timing_line(name: &str, run: &TestBedRun) -> String {
    let boots: Vec<String> = run
        .boots()
        .iter()
        .map(|b| match b.seconds {
            Some(s) => format!("{}={s:.1}s", b.name),
            None => format!("{}=?", b.name),
        })
        .collect();
    format!(
        "{name}: {} attempts={} | {}\n",
        run.result_line().unwrap_or("no NESTED-RESULT"),
        run.attempts,
        boots.join(" ")
    )
}

impl TestBed {
    /// A scenario called `name` (used in temp file names and messages), L1 with 2 vCPUs and
    /// 2 GiB, 600 s timeout, the L1 kernel `host/bzImage` from [`guest_dir`].
    pub fn new(name: &str) -> Self {
        TestBed {
            name: name
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect(),
            kernel: None,
            binaries: Vec::new(),
            files: Vec::new(),
            scenario: String::new(),
            cpus: 2,
            memory: "2G".into(),
            timeout: Duration::from_secs(600),
        }
    }

    /// L1 kernel other than `host/bzImage`.
    pub fn kernel(mut self, path: impl Into<PathBuf>) -> Self {
        self.kernel = Some(path.into());
        self
    }

    /// Copies an executable to L1's `/bin`.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binaries.push(path.into());
        self
    }

    /// Copies the static kapsel ([`kapsel_static_bin`]) to L1's `/bin`.
    pub fn with_kapsel(self) -> Self {
        self.binary(kapsel_static_bin())
    }

    /// Copies a host file to `/scenario/DEST` in L1.
    pub fn file(mut self, src: impl Into<PathBuf>, dest: &str) -> Self {
        self.files.push((src.into(), dest.to_string()));
        self
    }

    /// Copies `NAME` of the guest directory ([`guest_dir`]) to `/scenario/DEST` in L1.
    pub fn guest_file(self, name: &str, dest: &str) -> Self {
        let src = guest_dir().join(name);
        self.file(src, dest)
    }

    /// The scenario script (busybox sh), run in L1 with cwd `/scenario`.
    /// Prepend [`scenario::PRELUDE`] with [`TestBed::scenario_with_prelude`] to get `vm`.
    pub fn scenario(mut self, text: &str) -> Self {
        self.scenario = text.to_string();
        self
    }

    /// [`TestBed::scenario`] with the `vm`/`vm_shell` functions defined first.
    pub fn scenario_with_prelude(self, text: &str) -> Self {
        self.scenario(&format!("{}\n{text}", scenario::PRELUDE))
    }

    /// L1 vCPUs.
    pub fn cpus(mut self, n: u32) -> Self {
        self.cpus = n;
        self
    }

    /// L1 memory, QEMU syntax (`2G`, `8G`). Give L1 more than its L2 guests need.
    pub fn memory(mut self, size: &str) -> Self {
        self.memory = size.to_string();
        self
    }

    /// Wall-clock limit of one attempt.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Runs the scenario; retries when the test bed times out: once after a hang (rare), twice
    /// when L1 died early (TCG faults, see `run_attempts`).
    ///
    /// # Panics
    /// When the test bed cannot start or its retries time out too: the test fails loudly,
    /// never skips.
    pub fn run(&self) -> TestBedRun {
        self.try_run()
            .unwrap_or_else(|e| panic!("test bed {}: {}", self.name, error_chain(&e)))
    }

    /// [`TestBed::run`] without the panic.
    pub fn try_run(&self) -> Result<TestBedRun, Error> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = std::env::temp_dir();
        let stem = format!("kapsel-testbed-{}-{}-{seq}", self.name, std::process::id());
        let script = tmp.join(format!("{stem}.sh"));
        std::fs::write(&script, &self.scenario).map_err(|e| Error::io(&script, e))?;
        let log = tmp.join(format!("{stem}.log"));
        let result = self.run_attempts(&script, &log);
        let _ = std::fs::remove_file(&script);
        if let Ok(run) = &result {
            record_timing(&self.name, run);
        }
        result
    }

    fn run_attempts(&self, script: &Path, log: &Path) -> Result<TestBedRun, Error> {
        // one test bed at a time on this machine: scripts/testbed.sh serialises runs itself
        // (flock), so tests, benchmarks and scripts all queue on the same lock
        let mut log = log.to_path_buf();
        // A hang costs a whole timeout and gets one retry. L1 dying early (TCG's
        // multi-threaded translation sometimes runs a stale `int3` while L1's kernel patches
        // a static key, e.g. KVM's APIC keys as a vCPU is created: "int3: 0000 [#1]" and a
        // panic, more often on a loaded host) costs seconds and gets one more.
        let mut hangs = 0;
        for attempt in 1..=MAX_ATTEMPTS {
            let started = Instant::now();
            let (code, output) = self.run_once(script, &log)?;
            match code {
                RC_TIMEOUT => {
                    let hung = started.elapsed() >= self.timeout.mul_f32(0.9);
                    hangs += usize::from(hung);
                    // a third attempt only after two early deaths
                    let retry = attempt == 1 || (attempt == 2 && hangs == 0);
                    if !retry {
                        return Err(Error::TimedOut { output });
                    }
                    eprintln!(
                        "test bed {}: {} (log {}), retrying",
                        self.name,
                        if hung { "timed out" } else { "L1 died early" },
                        log.display()
                    );
                    log.set_extension(format!("retry{attempt}.log"));
                }
                RC_USAGE | RC_NO_KVM | RC_NO_INIT => {
                    let reason = match code {
                        RC_NO_KVM => "no /dev/kvm in L1",
                        RC_NO_INIT => "L1 never reached its init",
                        _ => "testbed.sh rejected its arguments or inputs",
                    };
                    return Err(Error::TestBedStart {
                        code,
                        reason,
                        output,
                    });
                }
                _ => {
                    return Ok(TestBedRun {
                        output,
                        code,
                        attempts: attempt,
                        elapsed: started.elapsed(),
                        log,
                    })
                }
            }
        }
        unreachable!("the loop returns on the last attempt")
    }

    fn command(&self, script: &Path, log: &Path) -> Command {
        let harness = repo_root().join("scripts/testbed.sh");
        let mut cmd = Command::new("bash");
        // the harness's own errors (stderr) belong in the same stream as the console
        cmd.arg("-c").arg(r#"exec "$0" "$@" 2>&1"#).arg(harness);
        cmd.arg("-s").arg(script).arg("-o").arg(log);
        cmd.arg("-p").arg(self.cpus.to_string());
        cmd.arg("-r").arg(&self.memory);
        cmd.arg("-t").arg(self.timeout.as_secs().max(1).to_string());
        let kernel = self
            .kernel
            .clone()
            .unwrap_or_else(|| guest_dir().join("host/bzImage"));
        cmd.arg("-k").arg(kernel);
        for b in &self.binaries {
            cmd.arg("-b").arg(b);
        }
        for (src, dest) in &self.files {
            let mut spec = src.as_os_str().to_owned();
            spec.push(":");
            spec.push(dest);
            cmd.arg("-f").arg(spec);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        cmd
    }

    /// One attempt: the exit code and the output (streamed to stderr as it comes, so a test
    /// run with `--nocapture` shows progress and a failing test shows everything).
    fn run_once(&self, script: &Path, log: &Path) -> Result<(i32, String), Error> {
        let mut child = self
            .command(script, log)
            .spawn()
            .map_err(|source| Error::Spawn {
                program: "scripts/testbed.sh".into(),
                source,
            })?;
        let mut output = String::new();
        if let Some(stdout) = child.stdout.take() {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf);
                        eprint!("{line}");
                        output.push_str(&line);
                    }
                    Err(e) => return Err(Error::io("scripts/testbed.sh stdout", e)),
                }
            }
        }
        let status = child
            .wait()
            .map_err(|e| Error::io("scripts/testbed.sh", e))?;
        // killed by a signal: report it like a shell would
        let code = status.code().unwrap_or(128);
        Ok((code, output))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(output: &str) -> TestBedRun {
        TestBedRun {
            output: output.into(),
            code: 0,
            attempts: 1,
            elapsed: Duration::ZERO,
            log: PathBuf::new(),
        }
    }

    #[test]
    fn result_line_is_the_last_one() {
        let r = run_with("NESTED-RESULT: rc=1\nx\nNESTED-RESULT: rc=0 total=3.1s\n");
        assert_eq!(r.result_line(), Some("NESTED-RESULT: rc=0 total=3.1s"));
        assert_eq!(run_with("nothing").result_line(), None);
    }

    #[test]
    fn timing_line_lists_boots() {
        let r = run_with(
            "KTEST-BEGIN a\nKTEST-END a rc=0 seconds=2.25\nNESTED-RESULT: rc=0 total=9.0s\n",
        );
        assert_eq!(
            timing_line("t", &r),
            "t: NESTED-RESULT: rc=0 total=9.0s attempts=1 | a=2.2s\n"
        );
    }

    #[test]
    fn name_is_sanitised_for_file_names() {
        let t = TestBed::new("a b/../c");
        assert_eq!(t.name, "abc");
    }

    #[test]
    fn command_carries_every_option() {
        let t = TestBed::new("x")
            .kernel("/k")
            .binary("/b")
            .file("/src/f", "d/f")
            .cpus(3)
            .memory("8G")
            .timeout(Duration::from_secs(42));
        let cmd = t.command(Path::new("/s.sh"), Path::new("/l.log"));
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        for want in [
            "-s /s.sh",
            "-o /l.log",
            "-p 3",
            "-r 8G",
            "-t 42",
            "-k /k",
            "-b /b",
            "-f /src/f:d/f",
        ] {
            assert!(joined.contains(want), "{want} missing in {joined}");
        }
    }

    #[test]
    fn missing_boot_panics_with_output() {
        let r = run_with("KTEST-BEGIN a\nKTEST-END a rc=0\n");
        assert_eq!(r.boot("a").rc, Some(0));
        let err = std::panic::catch_unwind(|| r.boot("b")).expect_err("must panic");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("no boot b"));
    }
}
