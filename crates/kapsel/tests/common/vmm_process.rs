//! A `kapsel run`/`kapsel restore` process under test with its API socket: started, waited
//! for until the socket is there, killed when dropped.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use client::vm::VmClient;
use client::Endpoint;

/// A VMM process; dropping it kills it and waits for it.
pub struct Vmm(pub Child);

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An empty scratch directory `kapsel-{test}-{pid}-{name}` in the temp dir.
pub fn dir(test: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kapsel-{test}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Starts `cmd` with `--api-socket socket` (no console input or output) and waits up to 20 s
/// for the socket to appear.
pub fn spawn(mut cmd: Command, socket: &Path) -> (Vmm, VmClient) {
    let vmm = Vmm(cmd
        .arg("--api-socket")
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "API socket never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    (vmm, VmClient::new(Endpoint::new(socket)))
}
