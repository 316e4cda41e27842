//! Hostile workloads: each escape attempt from inside is denied or contained.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

/// Runs `script` and expects it to print `denied`.
fn denied(name: &str, script: &str) {
    let f = sh(
        name,
        &format!("if {{ {script}; }} >/dev/null 2>&1; then echo allowed; else echo denied; fi"),
    );
    assert_eq!(f.output.trim(), "denied", "{script}: {}", f.output);
}

#[test]
fn mount_is_denied() {
    denied("mount", "mount -t tmpfs none /tmp");
    denied("mount-proc", "mount -t proc proc /mnt");
    denied("remount", "mount -o remount,rw /proc/sys");
}

#[test]
fn reboot_is_denied_and_the_host_stays_up() {
    // -n: no sync(2) first, which can take minutes on a host busy writing.
    let f = sh("reboot", "reboot -f -n; echo still-here $?");
    assert!(f.output.contains("still-here"), "{}", f.output);
    denied("halt", "poweroff -f -n");
}

#[test]
fn module_loading_is_denied() {
    let f = sh(
        "insmod",
        "echo junk > /tmp/m.ko; insmod /tmp/m.ko; echo rc=$?",
    );
    assert!(f.output.contains("rc=1"), "{}", f.output);
    assert!(f.output.contains("Operation not permitted"), "{}", f.output);
}

#[test]
fn host_processes_are_invisible() {
    let f = sh("ps", "ls /proc | grep -c '^[0-9]'");
    let n: u32 = f.output.trim().parse().unwrap();
    assert!(n <= 3, "container sees {n} pids: {}", f.output);
    let f = sh(
        "ps-kill",
        "kill -0 1 && echo pid1-is-me; kill -9 2 2>&1 || true",
    );
    assert!(f.output.contains("pid1-is-me"));
}

#[test]
fn sysrq_trigger_is_read_only() {
    denied("sysrq", "sh -c 'echo h > /proc/sysrq-trigger'");
}

#[test]
fn kernel_tunables_and_devices_are_out_of_reach() {
    denied("sysctl", "sh -c 'echo 1 > /proc/sys/kernel/sysrq'");
    denied("mknod", "mknod /tmp/sda b 8 0 && head -c1 /tmp/sda");
    denied("kcore", "head -c1 /proc/kcore | grep -q .");
    denied("unshare", "unshare -U true");
    denied("chroot", "chroot / true");
}

#[test]
fn cgroup_limits_cannot_be_raised_from_inside() {
    let mut cfg = config(
        "cgro",
        &[
            "sh",
            "-c",
            "echo max > /sys/fs/cgroup/pids/pids.max && echo raised || echo denied",
        ],
    );
    cfg.resources.pids_limit = Some(20);
    let f = run(&cfg);
    assert!(f.output.trim_end().ends_with("denied"), "{}", f.output);
}
