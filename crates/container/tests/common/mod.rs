//! Helpers for container tests: cached root filesystems, unique ids, run-and-capture.
#![allow(dead_code)]

use container::config::SeccompPolicy;
use container::{Container, ContainerConfig, CreateOptions, RootfsSource, Stdio};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// Builds (once, cached) a root filesystem with `scripts/container-rootfs.sh`.
pub fn rootfs(kind: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/container-rootfs.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(kind)
        .output()
        .expect("run container-rootfs.sh");
    assert!(
        out.status.success(),
        "container-rootfs.sh {kind} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

pub fn busybox() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| rootfs("busybox")).clone()
}

/// Test state lives apart from real containers.
pub fn state_root() -> PathBuf {
    PathBuf::from("/run/kapsel-test/containers")
}

/// A unique container id for this test process.
pub fn unique(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A container over the busybox image (overlay, private upper dir) running `args`.
pub fn config(name: &str, args: &[&str]) -> ContainerConfig {
    let id = unique(name);
    let mut cfg = ContainerConfig::new(
        &id,
        RootfsSource::Overlay(vec![busybox()]),
        args.iter().map(|s| s.to_string()).collect(),
    );
    cfg.cgroups_path = format!("/kapsel-test/{id}");
    cfg.seccomp = SeccompPolicy::Default;
    cfg
}

/// Force-deletes a container if a test panics before deleting it itself.
pub struct Guard(pub String);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(c) = Container::load(&state_root(), &self.0) {
            let _ = c.delete(true);
        }
    }
}

/// What a finished container left behind.
#[derive(Debug)]
pub struct Finished {
    pub code: i32,
    pub output: String,
    pub oom_kills: u64,
}

/// Runs `cfg` to completion with stdout+stderr captured, then deletes it.
pub fn run(cfg: &ContainerConfig) -> Finished {
    let (mut reader, writer) = std::io::pipe().expect("pipe");
    let opts = CreateOptions {
        state_root: state_root(),
        stdio: Stdio {
            stdin: None,
            stdout: Some(writer.as_raw_fd()),
            stderr: Some(writer.as_raw_fd()),
        },
        console_socket: None,
        wait_for_start: false,
    };
    let c = Container::create(cfg, &opts).expect("create container");
    let guard = Guard(cfg.id.clone());
    drop(writer);
    let mut output = String::new();
    reader.read_to_string(&mut output).expect("read output");
    let code = c.wait().expect("wait");
    let oom_kills = c.stats().expect("stats").oom_kills;
    c.delete(true).expect("delete");
    std::mem::forget(guard);
    Finished {
        code,
        output,
        oom_kills,
    }
}

/// Runs a shell snippet in a default container.
pub fn sh(name: &str, script: &str) -> Finished {
    run(&config(name, &["sh", "-c", script]))
}
