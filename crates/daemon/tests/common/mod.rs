//! A daemon under test: its own state dir, socket and cgroup root, the real `kapsel` binary,
//! and the no_std test guest imported as image `tg`. Dropping it kills the daemon and every
//! VMM it started and removes their cgroups.
#![allow(dead_code)]

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use api::daemon::{CreateInstance, ImportImage, Instance, InstanceStatus, RestartPolicy};
use client::daemon::DaemonClient;
use client::{ClientError, Endpoint};

pub mod disks;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `kapsel` binary next to this test's target directory, built once per test run.
pub fn kapsel_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test exe path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>/deps");
        let target_dir = profile_dir.parent().expect("target dir");
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "kapsel"])
            .env("CARGO_TARGET_DIR", target_dir)
            .current_dir(repo_root())
            .status()
            .expect("run cargo build -p kapsel");
        assert!(status.success(), "cargo build -p kapsel failed");
        profile_dir.join("kapsel")
    })
    .clone()
}

/// The PVH test guest, built once.
pub fn test_guest() -> PathBuf {
    static GUEST: OnceLock<PathBuf> = OnceLock::new();
    GUEST
        .get_or_init(|| {
            let out = Command::new(repo_root().join("scripts/build-test-guest.sh"))
                .output()
                .expect("run build-test-guest.sh");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            PathBuf::from(
                text.lines()
                    .find(|l| l.ends_with("test-guest-pvh"))
                    .expect("pvh guest path"),
            )
        })
        .clone()
}

/// Fails the test, naming what is missing, unless /dev/kvm exists: the daemon tests run real
/// VMMs and never skip silently.
pub fn require_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: the daemon tests run real VMMs (load kvm_intel/kvm_amd)"
    );
}

pub struct TestDaemon {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub socket: PathBuf,
    pub cgroup_root: String,
    extra_env: Vec<(String, String)>,
    prefix: Vec<String>,
}

impl TestDaemon {
    /// Starts a daemon and imports the test guest as image `tg`.
    pub fn start() -> Self {
        Self::start_with(Vec::new())
    }

    /// Starts a daemon under a command prefix (e.g. `unshare -n`).
    pub fn start_with(prefix: Vec<String>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kd")
            .tempdir_in("/tmp")
            .expect("tempdir");
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut d = TestDaemon {
            socket: dir.path().join("d.sock"),
            dir,
            child: None,
            cgroup_root: format!("kapsel-test-{}-{n}", std::process::id()),
            extra_env: Vec::new(),
            prefix,
        };
        d.spawn();
        d.client()
            .import_image(&ImportImage {
                name: "tg".into(),
                kernel: test_guest().display().to_string(),
                rootfs: None,
                initrd: None,
                disk: None,
                cmdline: Some("console=ttyS0".into()),
            })
            .expect("import test guest");
        d
    }

    /// Starts the daemon process (again) on the same state.
    pub fn spawn(&mut self) {
        let bin = kapsel_bin();
        let mut args: Vec<String> = self.prefix.clone();
        args.push(bin.display().to_string());
        args.extend(
            [
                "--log",
                "info",
                "daemon",
                "--state-dir",
                &self.dir.path().join("state").display().to_string(),
                "--run-dir",
                &self.dir.path().join("run").display().to_string(),
                "--socket",
                &self.socket.display().to_string(),
                "--cgroup-root",
                &self.cgroup_root,
                "--restart-delay-ms",
                "300",
                "--stop-timeout",
                "5",
            ]
            .map(String::from),
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .expect("daemon log");
        let child = Command::new(&args[0])
            .args(&args[1..])
            .envs(self.extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn daemon");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&self.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "daemon did not come up: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn client(&self) -> DaemonClient {
        DaemonClient::new(Endpoint::new(&self.socket).with_timeout(Duration::from_secs(60)))
    }

    pub fn daemon_pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// SIGKILLs the daemon and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Launches an instance of the test guest running `payload`.
    pub fn launch(&self, name: &str, payload: &str, restart: RestartPolicy) -> Instance {
        self.client()
            .create(&request(name, payload, restart))
            .unwrap_or_else(|e| panic!("launch {name}: {e}\n{}", self.log()))
    }

    /// Waits until `cond` holds for the instance, returning it.
    pub fn wait_for(&self, name: &str, what: &str, cond: impl Fn(&Instance) -> bool) -> Instance {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(i) = self.client().get(name) {
                if cond(&i) {
                    return i;
                }
                if Instant::now() > deadline {
                    panic!(
                        "{name}: timed out waiting for {what}; last {i:?}\n{}",
                        self.log()
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Gives this test's whole guest group the largest CPU weight, so that other work on a
    /// shared host does not starve the guests being measured (only our own group changes).
    pub fn boost_cpu_weight(&self) {
        let v1 = Path::new("/sys/fs/cgroup/cpu").join(&self.cgroup_root);
        if v1.exists() {
            let _ = std::fs::write(v1.join("cpu.shares"), "262144");
        }
        let v2 = Path::new("/sys/fs/cgroup").join(&self.cgroup_root);
        if v2.join("cpu.weight").exists() {
            let _ = std::fs::write(v2.join("cpu.weight"), "10000");
        }
    }

    pub fn cgroup_dir(&self, controller: &str, name: &str) -> PathBuf {
        Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(&self.cgroup_root)
            .join(name)
    }
}

pub fn request(name: &str, payload: &str, restart: RestartPolicy) -> CreateInstance {
    CreateInstance {
        name: name.into(),
        image: "tg".into(),
        kind: Default::default(),
        cpus: 1,
        memory_mib: 64,
        cmdline: format!("test={payload}"),
        restart,
        autostart: false,
        cpu_weight: None,
        cpu_cap_percent: None,
        cpuset: None,
        memory_limit_mib: None,
        networks: Vec::new(),
        command: Vec::new(),
        pids_limit: None,
        start: true,
        settings: None,
    }
}

/// The HTTP status of a request that must fail.
pub fn status_of<T: std::fmt::Debug>(r: Result<T, ClientError>) -> u16 {
    match r {
        Err(ClientError::Status { status, .. }) => status,
        other => panic!("expected an HTTP error, got {other:?}"),
    }
}

pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next())
                .unwrap_or("X")
                .to_string();
            state != "Z" && state != "X"
        })
        .unwrap_or(false)
}

pub fn running(i: &Instance) -> bool {
    i.status == InstanceStatus::Running
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        let pids: Vec<i32> = self
            .client()
            .list()
            .map(|l| l.iter().filter_map(|i| i.pid).collect())
            .unwrap_or_default();
        self.kill9();
        // dnsmasq instances of networks a failed test left behind.
        if let Ok(nets) = std::fs::read_dir(self.dir.path().join("state/networks")) {
            for n in nets.flatten() {
                let pid = std::fs::read_to_string(n.path().join("dnsmasq.pid"))
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok());
                if let Some(pid) = pid.filter(|&p| alive(p)) {
                    // SAFETY: kill takes plain integers.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        for pid in pids {
            // SAFETY: kill takes plain integers.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // VMMs re-attached from an earlier daemon are not in the list when it was killed
        // first; kill anything left in our cgroups, then remove them.
        std::thread::sleep(Duration::from_millis(200));
        for c in [
            "cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "devices", "freezer",
        ] {
            let root = Path::new("/sys/fs/cgroup").join(c).join(&self.cgroup_root);
            let Ok(entries) = std::fs::read_dir(&root) else {
                continue;
            };
            for e in entries.flatten() {
                if e.path().is_dir() {
                    if let Ok(procs) = std::fs::read_to_string(e.path().join("cgroup.procs")) {
                        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                            // SAFETY: kill takes plain integers.
                            unsafe { libc::kill(pid, libc::SIGKILL) };
                        }
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        for c in [
            "cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "devices", "freezer",
        ] {
            let root = Path::new("/sys/fs/cgroup").join(c).join(&self.cgroup_root);
            if let Ok(entries) = std::fs::read_dir(&root) {
                for e in entries.flatten() {
                    if e.path().is_dir() {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(&root);
        }
    }
}
