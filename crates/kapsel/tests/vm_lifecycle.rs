//! The per-VM control API on /dev/kvm with the no_std test guest's `count` payload: pause and
//! resume, snapshot and restore in a fresh process, and every way a snapshot or restore can
//! go wrong. The guest prints `count: N` forever; a count that goes on from where it stopped
//! proves CPU and memory state survived.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::vm::VmClient;
use client::{ClientError, Endpoint};
use test_infra::{require_kvm, test_guest, TestGuestEntry};

const WAIT: Duration = Duration::from_secs(20);

fn kapsel() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kapsel"))
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kapsel-lifecycle-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A VMM process with its console output collected line by line.
struct Vmm {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    client: VmClient,
}

impl Vmm {
    /// Starts `cmd` with `--api-socket socket` and waits for the socket.
    fn spawn(mut cmd: Command, socket: &Path) -> Vmm {
        let mut child = cmd
            .arg("--api-socket")
            .arg(socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kapsel");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + WAIT;
        while !socket.exists() {
            assert!(Instant::now() < deadline, "API socket never appeared");
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                panic!("kapsel exited early ({status}): {err}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let client = VmClient::new(Endpoint::new(socket).with_timeout(Duration::from_secs(30)));
        Vmm {
            child,
            lines,
            client,
        }
    }

    /// `kapsel restore SNAP` with its API on `socket`.
    fn restore(snap: &Path, socket: &Path) -> Vmm {
        let mut cmd = kapsel();
        cmd.arg("restore").arg(snap);
        Vmm::spawn(cmd, socket)
    }

    fn boot_count(dir: &Path, memory: &str) -> Vmm {
        let socket = dir.join("api.sock");
        let mut cmd = kapsel();
        cmd.arg("run")
            .arg("--kernel")
            .arg(test_guest(TestGuestEntry::Pvh))
            .args(["--cmdline", "test=count", "--cpus", "2", "--memory", memory]);
        Vmm::spawn(cmd, &socket)
    }

    fn counts(&self) -> Vec<u64> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| l.strip_prefix("count: "))
            .filter_map(|n| n.trim().parse().ok())
            .collect()
    }

    fn last_count(&self) -> Option<u64> {
        self.counts().last().copied()
    }

    /// Waits until at least `n` count lines arrived; returns the last count.
    fn wait_counts(&self, n: usize) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let c = self.counts();
            if c.len() >= n {
                return *c.last().unwrap();
            }
            assert!(Instant::now() < deadline, "only {} count lines", c.len());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(mut self) -> i32 {
        let _ = self.client.shutdown(Some(0));
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "VMM did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn assert_consecutive(counts: &[u64]) {
    for w in counts.windows(2) {
        assert_eq!(w[1], w[0] + 1, "count jumped: {counts:?}");
    }
}

fn status_of(e: ClientError) -> (u16, String) {
    match e {
        ClientError::Status { status, message } => (status, message),
        other => panic!("expected an HTTP error status, got {other}"),
    }
}

#[test]
fn pause_and_resume_keep_counting() {
    require_kvm();
    let dir = tempdir("pause");
    let vm = Vmm::boot_count(&dir, "128M");
    vm.wait_counts(3);
    let info = vm.client.pause().unwrap();
    assert_eq!(info.state, api::vm::VmState::Paused);
    std::thread::sleep(Duration::from_millis(100));
    let at_pause = vm.counts().len();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(vm.counts().len(), at_pause, "guest ran while paused");

    // Wrong-state calls are 409 and change nothing.
    let (status, msg) = status_of(vm.client.pause().unwrap_err());
    assert_eq!(status, 409, "{msg}");
    assert!(msg.contains("paused"), "{msg}");

    vm.client.resume().unwrap();
    let (status, _) = status_of(vm.client.resume().unwrap_err());
    assert_eq!(status, 409);
    vm.wait_counts(at_pause + 3);
    assert_consecutive(&vm.counts());
    let info = vm.client.info().unwrap();
    assert_eq!(info.state, api::vm::VmState::Running);
    assert!(info.counters.paused_ms >= 500, "{:?}", info.counters);
    let metrics = vm.client.metrics().unwrap();
    assert!(
        metrics.contains("kapsel_vm_state{state=\"running\"} 1"),
        "{metrics}"
    );
    assert_eq!(vm.stop(), 0);
}

#[test]
fn snapshot_then_restore_in_a_new_process_continues_the_count() {
    require_kvm();
    let dir = tempdir("restore");
    let snap = dir.join("snap");
    let vm = Vmm::boot_count(&dir, "256M");
    vm.wait_counts(3);

    let (status, msg) = status_of(vm.client.snapshot(snap.to_str().unwrap()).unwrap_err());
    assert_eq!(status, 409, "snapshot of a running VM: {msg}");
    assert!(!snap.join("state").exists());

    vm.client.pause().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let before = vm.last_count().unwrap();
    let info = vm.client.snapshot(snap.to_str().unwrap()).unwrap();
    assert_eq!(info.memory_bytes, 256 << 20);
    assert!(snap.join("state").is_file() && snap.join("memory").is_file());
    let (status, msg) = status_of(vm.client.snapshot(snap.to_str().unwrap()).unwrap_err());
    assert_eq!(status, 409, "second snapshot into the same dir: {msg}");
    // The source VM goes on after the snapshot.
    vm.client.resume().unwrap();
    vm.wait_counts(vm.counts().len() + 2);
    assert_eq!(vm.stop(), 0);

    let socket = dir.join("restored.sock");
    let restored = Vmm::restore(&snap, &socket);
    let first = restored.wait_counts(3);
    let counts = restored.counts();
    assert!(
        counts[0] > before && counts[0] <= before + 2,
        "restored count starts at {} after {before}",
        counts[0]
    );
    assert_consecutive(&counts);
    assert!(first > before);
    let info = restored.client.info().unwrap();
    assert_eq!(info.restored_from.as_deref(), snap.to_str());
    assert_eq!(info.config.memory_mib, 256);
    assert_eq!(restored.stop(), 0);
}

/// The balloon's target (set while the VM runs) and options survive a snapshot and a restore
/// in a new process (the test guest has no balloon driver: the device is saved inactive).
#[test]
fn a_balloon_keeps_its_target_across_snapshot_and_restore() {
    require_kvm();
    let dir = tempdir("balloon");
    let snap = dir.join("snap");
    let socket = dir.join("api.sock");
    let mut cmd = kapsel();
    cmd.arg("run")
        .arg("--kernel")
        .arg(test_guest(TestGuestEntry::Pvh))
        .args(["--cmdline", "test=count", "--memory", "128M"])
        .args(["--balloon", "stats_period=2,free_page_reporting=on"]);
    let vm = Vmm::spawn(cmd, &socket);
    vm.wait_counts(2);
    assert_eq!(vm.client.set_balloon(48).unwrap().target_mib, 48);
    let (status, msg) = status_of(vm.client.set_balloon(129).unwrap_err());
    assert_eq!(status, 400, "{msg}");
    vm.client.pause().unwrap();
    vm.client.snapshot(snap.to_str().unwrap()).unwrap();
    assert_eq!(vm.stop(), 0);

    let socket = dir.join("restored.sock");
    let restored = Vmm::restore(&snap, &socket);
    restored.wait_counts(2);
    let b = restored.client.balloon().unwrap();
    assert_eq!(b.target_mib, 48, "{b:?}");
    assert_eq!(b.stats_period_secs, Some(2), "{b:?}");
    assert!(b.free_page_reporting && !b.deflate_on_oom, "{b:?}");
    assert_eq!(restored.client.set_balloon(0).unwrap().target_mib, 0);
    assert_eq!(restored.stop(), 0);
}

/// A valid snapshot to damage, made once per test that needs one.
fn make_snapshot(dir: &Path) -> PathBuf {
    let snap = dir.join("good");
    let vm = Vmm::boot_count(dir, "64M");
    vm.wait_counts(1);
    vm.client.pause().unwrap();
    vm.client.snapshot(snap.to_str().unwrap()).unwrap();
    assert_eq!(vm.stop(), 0);
    snap
}

fn copy_snapshot(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["state", "memory"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

fn restore_fails(snap: &Path) -> String {
    let out = kapsel()
        .arg("restore")
        .arg(snap)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "restore of {}: {err}",
        snap.display()
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn restore_refuses_damaged_snapshots() {
    require_kvm();
    let dir = tempdir("damaged");
    let good = make_snapshot(&dir);

    let case = |name: &str, damage: &dyn Fn(&Path)| -> String {
        let d = dir.join(name);
        copy_snapshot(&good, &d);
        damage(&d);
        restore_fails(&d)
    };
    let state_len = std::fs::metadata(good.join("state")).unwrap().len();
    let err = case("truncated", &|d| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.join("state"))
            .unwrap();
        f.set_len(state_len / 2).unwrap();
    });
    assert!(err.contains("truncated"), "{err}");
    let err = case("corrupted", &|d| {
        let mut bytes = std::fs::read(d.join("state")).unwrap();
        let i = bytes.len() - 10;
        bytes[i] ^= 0x55;
        std::fs::write(d.join("state"), bytes).unwrap();
    });
    assert!(err.contains("corrupted"), "{err}");
    let err = case("version", &|d| {
        let mut bytes = std::fs::read(d.join("state")).unwrap();
        bytes[8] = 99;
        std::fs::write(d.join("state"), bytes).unwrap();
    });
    assert!(err.contains("version 99"), "{err}");
    let err = case("no-memory", &|d| {
        std::fs::remove_file(d.join("memory")).unwrap()
    });
    assert!(err.contains("memory"), "{err}");
    let err = case("short-memory", &|d| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.join("memory"))
            .unwrap();
        f.set_len(4096).unwrap();
    });
    assert!(err.contains("memory"), "{err}");
    let err = restore_fails(&dir.join("does-not-exist"));
    assert!(err.contains("state"), "{err}");
    // The good one still restores.
    let socket = dir.join("ok.sock");
    let vm = Vmm::restore(&good, &socket);
    vm.wait_counts(2);
    assert_eq!(vm.stop(), 0);
}

struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_during_snapshot_leaves_nothing_and_the_vm_runs_on() {
    require_kvm();
    let dir = tempdir("full");
    let mnt = dir.join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16k", "kapsel-test"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(ok.success(), "mount tmpfs (tests run as root)");
    let _guard = Tmpfs(mnt.clone());

    let vm = Vmm::boot_count(&dir, "64M");
    vm.wait_counts(2);
    vm.client.pause().unwrap();
    let target = mnt.join("snap");
    let (status, msg) = status_of(vm.client.snapshot(target.to_str().unwrap()).unwrap_err());
    assert!((400..600).contains(&status), "{status} {msg}");
    assert!(msg.contains("cannot write"), "{msg}");
    let left: Vec<_> = std::fs::read_dir(&target)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "files left behind: {left:?}");
    vm.client.resume().unwrap();
    let n = vm.counts().len();
    vm.wait_counts(n + 2);
    assert_eq!(vm.stop(), 0);
}

fn raw(socket: &Path, request: &[u8]) -> String {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn hostile_api_requests_get_4xx_and_change_nothing() {
    require_kvm();
    let dir = tempdir("hostile");
    let vm = Vmm::boot_count(&dir, "64M");
    vm.wait_counts(1);
    let socket = dir.join("api.sock");
    let cases: &[(&[u8], &str)] = &[
        (b"GET /nope HTTP/1.1\r\n\r\n", "404"),
        (b"DELETE /vm HTTP/1.1\r\n\r\n", "405"),
        (
            b"PUT /vm/snapshot HTTP/1.1\r\nContent-Length: 5\r\n\r\n{{{{{",
            "400",
        ),
        (
            b"PUT /vm/snapshot HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n",
            "400",
        ),
        (b"\x00\x01\x02garbage\r\n\r\n", "400"),
        (
            b"PUT /vm/shutdown HTTP/1.1\r\nContent-Length: 20\r\n\r\n{\"timeout_ms\":\"x\"}",
            "400",
        ),
    ];
    for (req, status) in cases {
        let resp = raw(&socket, req);
        assert!(
            resp.starts_with(&format!("HTTP/1.1 {status}")),
            "{:?} -> {resp}",
            String::from_utf8_lossy(req)
        );
        assert!(resp.contains("\"error\""), "{resp}");
    }
    // A client that connects and says nothing does not block the API for long.
    let idle = UnixStream::connect(&socket).unwrap();
    let info = vm.client.info().unwrap();
    drop(idle);
    assert_eq!(info.state, api::vm::VmState::Running);
    let n = vm.counts().len();
    vm.wait_counts(n + 2);
    assert_eq!(vm.stop(), 0);
}

/// `kapsel restore SNAP ARGS…` must fail with exit code 1 and one line; returns the line.
fn restore_fails_with(snap: &Path, args: &[&str]) -> String {
    let out = kapsel()
        .arg("restore")
        .arg(snap)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "restore {args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// A VM with a disk, the entropy device and vsock snapshots (its virtio devices' state goes
/// with it) and restores as a clone with its own disk image and vsock socket and CID. The test
/// guest never drives its virtio devices; the Linux guests in `testbed_snapshot_devices.rs`
/// do. Overrides that do not fit the snapshot are one-line errors.
#[test]
fn a_vm_with_virtio_devices_snapshots_and_restores_as_a_clone() {
    require_kvm();
    let dir = tempdir("virtio");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let socket = dir.join("api.sock");
    let mut cmd = kapsel();
    cmd.arg("run")
        .arg("--kernel")
        .arg(test_guest(TestGuestEntry::Pvh))
        .args(["--cmdline", "test=count", "--memory", "64M", "--rng"])
        .arg("--disk")
        .arg(format!("path={}", disk.display()))
        .arg("--vsock")
        .arg(format!("cid=3,socket={}", dir.join("v.sock").display()));
    let vm = Vmm::spawn(cmd, &socket);
    vm.wait_counts(2);
    vm.client.pause().unwrap();
    let snap = dir.join("snap");
    vm.client.snapshot(snap.to_str().unwrap()).unwrap();
    let before = vm.last_count().unwrap();
    assert_eq!(vm.stop(), 0);

    let copy = dir.join("clone.img");
    std::fs::copy(&disk, &copy).unwrap();
    let clone_sock = dir.join("clone-v.sock");
    let socket = dir.join("clone.sock");
    let mut cmd = kapsel();
    cmd.arg("restore")
        .arg(&snap)
        .arg("--disk")
        .arg(format!("id=disk0,path={},format=raw", copy.display()))
        .arg("--vsock")
        .arg(format!("socket={},cid=5", clone_sock.display()));
    let clone = Vmm::spawn(cmd, &socket);
    clone.wait_counts(3);
    let counts = clone.counts();
    assert!(
        counts[0] > before && counts[0] <= before + 2,
        "clone count starts at {} after {before}",
        counts[0]
    );
    assert_consecutive(&counts);
    assert!(
        clone_sock.exists(),
        "the clone listens on its own vsock socket"
    );
    assert_eq!(clone.stop(), 0);

    let small = dir.join("small.img");
    std::fs::write(&small, vec![0u8; 4096]).unwrap();
    let err = restore_fails_with(
        &snap,
        &["--disk", &format!("id=disk0,path={}", small.display())],
    );
    assert!(
        err.contains("disk disk0: the image has 8 sectors, the snapshot's disk had 2048"),
        "{err}"
    );
    let err = restore_fails_with(&snap, &["--net", "id=net0,tap=clone0"]);
    assert!(
        err.contains("--net: the snapshot has no net 'net0' (it has: none)"),
        "{err}"
    );
    let err = restore_fails_with(&snap, &["--disk", "id=disk1,path=/x"]);
    assert!(err.contains("it has: disk0"), "{err}");
    let err = restore_fails_with(&snap, &["--vsock", "cid=1"]);
    assert!(err.contains("--vsock: invalid cid '1'"), "{err}");
}

/// `Seccomp:` of every thread of `pid` (2 = filter mode).
fn seccomp_modes(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|t| {
            let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
            status
                .lines()
                .find_map(|l| l.strip_prefix("Seccomp:"))
                .unwrap_or("?")
                .trim()
                .to_string()
        })
        .collect()
}

#[test]
fn every_vmm_thread_runs_under_the_seccomp_filter() {
    require_kvm();
    let dir = tempdir("seccomp");
    let vm = Vmm::boot_count(&dir, "128M");
    vm.wait_counts(2);
    let modes = seccomp_modes(vm.child.id());
    assert!(modes.len() >= 3, "vCPUs, API, console threads: {modes:?}");
    assert!(
        modes.iter().all(|m| m == "2"),
        "threads without the filter: {modes:?}"
    );
    // The API, pause/resume and a snapshot all work inside the filter.
    vm.client.pause().unwrap();
    vm.client
        .snapshot(dir.join("snap").to_str().unwrap())
        .unwrap();
    vm.client.resume().unwrap();
    vm.wait_counts(4);
    assert_eq!(vm.stop(), 0);

    let socket = dir.join("api2.sock");
    let mut cmd = kapsel();
    cmd.arg("run")
        .arg("--kernel")
        .arg(test_guest(TestGuestEntry::Pvh))
        .args(["--cmdline", "test=count", "--memory", "64M", "--no-seccomp"]);
    let vm = Vmm::spawn(cmd, &socket);
    vm.wait_counts(2);
    let modes = seccomp_modes(vm.child.id());
    assert!(modes.iter().all(|m| m == "0"), "{modes:?}");
    assert_eq!(vm.stop(), 0);
}
