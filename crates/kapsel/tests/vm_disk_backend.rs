//! A live disk image switch in a VMM process under its seccomp filter (no_std test guest on
//! /dev/kvm): the open image is moved to a layer and a fresh overlay over it takes its name,
//! like the daemon's snapshot does; the paused VM switches to the overlay, the process then
//! has the overlay open and not the old file, keeps running, and a snapshot taken after the
//! switch restores in a new process on the new image.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/vmm_process.rs"]
mod vmm_process;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use api::vm::{DiskBackendRequest, DiskFormat, VmState};
use client::ClientError;
use test_infra::{require_kvm, test_guest, TestGuestEntry};
use vmm_process::spawn;

fn dir(name: &str) -> PathBuf {
    vmm_process::dir("backend", name)
}

/// The files the process has open (targets of /proc/PID/fd).
fn open_files(pid: u32) -> Vec<PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .collect()
}

fn overlay(base: &Path, at: &Path) {
    disk::create(
        at,
        &disk::CreateOptions {
            backing: Some((base.display().to_string(), disk::Format::Qcow2)),
            ..Default::default()
        },
    )
    .unwrap();
}

#[test]
fn a_paused_vm_switches_to_an_overlay_of_its_moved_disk() {
    require_kvm();
    let d = dir("switch");
    let root = d.join("root.qcow2");
    disk::create(
        &root,
        &disk::CreateOptions {
            size: Some(4 << 20),
            ..Default::default()
        },
    )
    .unwrap();
    let mut run = Command::new(env!("CARGO_BIN_EXE_kapsel"));
    run.arg("run")
        .arg("--kernel")
        .arg(test_guest(TestGuestEntry::Pvh))
        .args(["--cmdline", "test=count", "--memory", "64M"])
        .arg("--disk")
        .arg(format!("path={},format=qcow2", root.display()));
    let (mut vmm, vm) = spawn(run, &d.join("a.sock"));
    let pid = vmm.0.id();
    assert!(open_files(pid).contains(&root));

    // What the daemon does: pause, move the open image to a layer, new overlay, switch.
    vm.pause().unwrap();
    let layer = d.join("layer-1.qcow2");
    std::fs::rename(&root, &layer).unwrap();
    overlay(&layer, &root);
    let req = DiskBackendRequest {
        path: root.display().to_string(),
        format: DiskFormat::Qcow2,
    };
    let now = vm.set_disk_backend("disk0", &req).unwrap();
    assert_eq!(
        (now.path.as_str(), now.size_bytes),
        (req.path.as_str(), 4 << 20)
    );
    let files = open_files(pid);
    assert!(files.contains(&root), "the overlay is open: {files:?}");
    assert!(
        files.contains(&layer),
        "the layer is open as the overlay's backing file: {files:?}"
    );
    assert_eq!(
        files.iter().filter(|f| **f == layer).count(),
        1,
        "the old read-write handle on the layer is closed: {files:?}"
    );
    // A file that does not build on the open image is refused; the overlay stays.
    let other = d.join("other.qcow2");
    disk::create(
        &other,
        &disk::CreateOptions {
            size: Some(4 << 20),
            ..Default::default()
        },
    )
    .unwrap();
    let e = vm
        .set_disk_backend(
            "disk0",
            &DiskBackendRequest {
                path: other.display().to_string(),
                format: DiskFormat::Qcow2,
            },
        )
        .unwrap_err();
    let ClientError::Status { status, message } = e else {
        panic!("{e}")
    };
    assert_eq!(status, 400);
    assert!(message.contains("does not build on"), "{message}");
    assert_eq!(vm.disk_backend("disk0").unwrap().path, req.path);

    // The switch works a second time (another snapshot), here through the CLI, and the VM
    // runs on.
    let layer2 = d.join("layer-2.qcow2");
    std::fs::rename(&root, &layer2).unwrap();
    overlay(&layer2, &root);
    let cli = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_kapsel"))
            .arg("vm")
            .args(args)
            .arg("--api-socket")
            .arg(d.join("a.sock"))
            .output()
            .unwrap();
        let text =
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        (o.status.code(), text)
    };
    let root_arg = root.display().to_string();
    let (code, text) = cli(&["disk", "disk0", "--switch-to", &root_arg]);
    assert_eq!(code, Some(2), "--format is required: {text}");
    let (code, text) = cli(&[
        "disk",
        "disk0",
        "--switch-to",
        &root_arg,
        "--format",
        "qcow2",
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("\"size_bytes\": 4194304"), "{text}");
    let (code, text) = cli(&["disk", "disk9"]);
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains("no disk 'disk9'"), "{text}");
    vm.resume().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(vm.info().unwrap().state, VmState::Running);
    assert!(
        vmm.0.try_wait().unwrap().is_none(),
        "the VMM (seccomp on) lives"
    );

    // A snapshot after the switch names the image in use; restored, it opens that.
    vm.pause().unwrap();
    let snap = d.join("snap");
    vm.snapshot(snap.to_str().unwrap()).unwrap();
    drop(vmm);
    let chain = disk::info_chain(&root, Some(disk::Format::Qcow2)).unwrap();
    let names: Vec<&Path> = chain.iter().map(|i| i.path.as_path()).collect();
    assert_eq!(names, [root.as_path(), &layer2, &layer]);
    let mut restore = Command::new(env!("CARGO_BIN_EXE_kapsel"));
    restore.arg("restore").arg(&snap);
    let (restored, vm2) = spawn(restore, &d.join("b.sock"));
    assert_eq!(vm2.disk_backend("disk0").unwrap().path, req.path);
    assert!(open_files(restored.0.id()).contains(&root));
    drop(restored);
    std::fs::remove_dir_all(&d).unwrap();
}
