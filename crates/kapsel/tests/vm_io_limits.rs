//! Run-time I/O limits through the API on a live VMM (no_std test guest on /dev/kvm): a
//! disk's limits change, read back, and survive a snapshot and a restore in a new process
//! (the snapshot saves the configuration they were changed in).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/vmm_process.rs"]
mod vmm_process;

use std::path::PathBuf;
use std::process::Command;

use api::vm::IoLimit;
use test_infra::{require_kvm, test_guest, TestGuestEntry};
use vmm_process::spawn;

fn dir(name: &str) -> PathBuf {
    vmm_process::dir("iolimits", name)
}

#[test]
fn disk_limits_change_at_run_time_and_survive_snapshot_and_restore() {
    require_kvm();
    let d = dir("snap");
    let disk = d.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut run = Command::new(env!("CARGO_BIN_EXE_kapsel"));
    run.arg("run")
        .arg("--kernel")
        .arg(test_guest(TestGuestEntry::Pvh))
        .args(["--cmdline", "test=count", "--memory", "64M"])
        .arg("--disk")
        .arg(format!("path={},id=data,bw=10M", disk.display()));
    let (vmm, vm) = spawn(run, &d.join("a.sock"));

    let set = IoLimit {
        bytes_per_sec: Some(20 << 20),
        bytes_burst: Some(4 << 20),
        ops_per_sec: Some(500),
        ops_burst: None,
    };
    let now = vm.set_disk_limits("data", &set).unwrap();
    assert_eq!(now.bytes_burst, Some(4 << 20));
    assert_eq!(
        now.ops_burst,
        Some(50),
        "default burst: a tenth of a second"
    );
    let err = vm.net_limits("net0").unwrap_err().to_string();
    assert_eq!(err, "no network card 'net0' (cards: none)");

    vm.pause().unwrap();
    let snap = d.join("snap");
    vm.snapshot(snap.to_str().unwrap()).unwrap();
    drop(vmm);

    let mut restore = Command::new(env!("CARGO_BIN_EXE_kapsel"));
    restore.arg("restore").arg(&snap);
    let (_restored, vm2) = spawn(restore, &d.join("b.sock"));
    assert_eq!(vm2.disk_limits("data").unwrap(), now);
    let unlimited = vm2.set_disk_limits("data", &IoLimit::default()).unwrap();
    assert!(unlimited.is_unlimited());
}
