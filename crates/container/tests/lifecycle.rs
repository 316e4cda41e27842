//! Real containers from the busybox root filesystem: output, exit status, OCI lifecycle.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use container::spec::{to_config, Spec};
use container::{Container, CreateOptions, Status, Stdio};
use std::io::Read;
use std::os::fd::AsRawFd;

#[test]
fn shell_command_output_and_exit_code() {
    let f = sh("out", "echo hello from $(hostname); exit 7");
    assert_eq!(f.code, 7, "{}", f.output);
    assert!(f.output.starts_with("hello from out-"), "{}", f.output);
}

#[test]
fn killed_by_signal_reports_128_plus_signal() {
    let cfg = config("sig", &["sleep", "30"]);
    let opts = CreateOptions {
        wait_for_start: false,
        ..CreateOptions::oci(state_root())
    };
    let c = Container::create(&cfg, &opts).unwrap();
    c.kill(libc::SIGKILL, false).unwrap();
    assert_eq!(c.wait().unwrap(), 128 + 9);
    c.delete(false).unwrap();
}

#[test]
fn missing_program_is_a_named_error() {
    let cfg = config("noexec", &["/no/such/program"]);
    let opts = CreateOptions {
        wait_for_start: false,
        ..CreateOptions::oci(state_root())
    };
    let err = Container::create(&cfg, &opts).unwrap_err().to_string();
    assert!(
        err.contains("/no/such/program") && err.contains("No such file"),
        "{err}"
    );
    assert!(
        Container::load(&state_root(), &cfg.id).is_err(),
        "state removed"
    );
}

#[test]
fn overlay_writes_stay_in_the_upper_dir() {
    let cfg = config(
        "overlay",
        &["sh", "-c", "echo data > /etc/written && cat /etc/written"],
    );
    let f = run(&cfg);
    assert_eq!(f.output.trim(), "data");
    assert!(!busybox().join("etc/written").exists(), "image untouched");
}

#[test]
fn pid_one_and_private_hostname() {
    let f = sh("pid1", "echo $$; hostname");
    let lines: Vec<&str> = f.output.lines().collect();
    assert_eq!(lines[0], "1", "{}", f.output);
    assert!(lines[1].starts_with("pid1-"));
}

#[test]
fn capabilities_are_dropped_to_the_default_set() {
    let f = sh("caps", "grep CapBnd /proc/self/status");
    let hex = f.output.split_whitespace().nth(1).unwrap();
    let bits = u64::from_str_radix(hex, 16).unwrap();
    assert_eq!(bits, sandbox::caps::CapSet::default_container().0);
    let f = sh(
        "nnp",
        "grep NoNewPrivs /proc/self/status; grep Seccomp: /proc/self/status",
    );
    assert!(f.output.contains("NoNewPrivs:\t1"), "{}", f.output);
    assert!(f.output.contains("Seccomp:\t2"), "{}", f.output);
}

#[test]
fn user_namespace_maps_root_to_an_unprivileged_host_id() {
    // Mapped root cannot traverse /root (0700), where the image cache lives: use a copy.
    let img = tempfile::tempdir().unwrap();
    let st = std::process::Command::new("cp")
        .args(["-a", &format!("{}/.", busybox().display())])
        .arg(img.path())
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::set_permissions(
        img.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut cfg = config("userns", &["sh", "-c", "id -u; cat /proc/self/uid_map"])
        .with_user_namespace(100_000, 65_536);
    cfg.rootfs = container::RootfsSource::Overlay(vec![img.path().to_path_buf()]);
    let f = run(&cfg);
    assert_eq!(f.code, 0, "{}", f.output);
    let mut lines = f.output.lines();
    assert_eq!(lines.next(), Some("0"));
    let map: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(map, vec!["0", "100000", "65536"]);
}

/// A bundle as `runc spec` writes it, rewritten only to point at the busybox rootfs,
/// without a terminal, and with our command.
fn runc_bundle(args: &[&str]) -> tempfile::TempDir {
    spec_bundle("runc", args)
}

/// A bundle from `TOOL spec` (runc or crun), rewritten as above.
fn spec_bundle(tool: &str, args: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let st = std::process::Command::new(tool)
        .arg("spec")
        .current_dir(dir.path())
        .status()
        .unwrap_or_else(|e| panic!("{tool} is installed (scripts/setup-host.sh): {e}"));
    assert!(st.success());
    let path = dir.path().join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["root"]["path"] = busybox().display().to_string().into();
    v["process"]["terminal"] = false.into();
    v["process"]["args"] = args.iter().map(|s| serde_json::Value::from(*s)).collect();
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    dir
}

#[test]
fn runc_spec_bundle_runs_unchanged_through_the_oci_lifecycle() {
    let bundle = runc_bundle(&["sh", "-c", "hostname; touch /x 2>&1; exit 5"]);
    let spec = Spec::load(bundle.path()).unwrap();
    let id = unique("runc");
    let cfg = to_config(&spec, &id, bundle.path()).unwrap();
    let (mut reader, writer) = std::io::pipe().unwrap();
    let opts = CreateOptions {
        stdio: Stdio {
            stdin: None,
            stdout: Some(writer.as_raw_fd()),
            stderr: Some(writer.as_raw_fd()),
        },
        ..CreateOptions::oci(state_root())
    };
    let mut c = Container::create(&cfg, &opts).unwrap();
    drop(writer);
    assert_eq!(c.status(), Status::Created);
    let state = Container::load(&state_root(), &id).unwrap().oci_state();
    assert_eq!(state.pid, c.pid());
    c.start().unwrap();
    let mut out = String::new();
    reader.read_to_string(&mut out).unwrap();
    assert_eq!(c.wait().unwrap(), 5);
    assert_eq!(c.status(), Status::Stopped);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("runc"));
    assert!(
        lines.next().unwrap().contains("Read-only file system"),
        "{out}"
    );
    c.delete(false).unwrap();
}

#[test]
fn crun_spec_bundle_runs_unchanged() {
    let bundle = spec_bundle(
        "crun",
        &["sh", "-c", "hostname; grep CapBnd /proc/self/status"],
    );
    let spec = Spec::load(bundle.path()).unwrap();
    let cfg = to_config(&spec, &unique("crun"), bundle.path()).unwrap();
    let f = run(&cfg);
    assert_eq!(f.code, 0, "{}", f.output);
    let mut lines = f.output.lines();
    assert_eq!(lines.next(), Some("crun"));
    // CAP_AUDIT_WRITE, CAP_KILL, CAP_NET_BIND_SERVICE, as crun spec lists them.
    assert!(
        lines.next().unwrap().ends_with("0000000020000420"),
        "{}",
        f.output
    );
}

#[test]
fn delete_of_a_running_container_needs_force() {
    let cfg = config("force", &["sleep", "30"]);
    let opts = CreateOptions {
        wait_for_start: false,
        ..CreateOptions::oci(state_root())
    };
    let c = Container::create(&cfg, &opts).unwrap();
    assert_eq!(c.status(), Status::Running);
    let c = Container::load(&state_root(), &cfg.id).unwrap();
    let err = c.delete(false).unwrap_err().to_string();
    assert!(err.contains("running"), "{err}");
    let mut c = Container::load(&state_root(), &cfg.id).unwrap();
    c.pause().unwrap();
    assert_eq!(c.status(), Status::Paused);
    c.resume().unwrap();
    c.delete(true).unwrap();
    assert!(Container::load(&state_root(), &cfg.id).is_err());
}

#[test]
fn debian_rootfs_runs() {
    let debian = common::rootfs("debian");
    let mut cfg = config(
        "debian",
        &["sh", "-c", "cat /etc/debian_version; ls /usr/bin/apt"],
    );
    cfg.rootfs = container::RootfsSource::Overlay(vec![debian]);
    let f = run(&cfg);
    assert_eq!(f.code, 0, "{}", f.output);
    assert!(f.output.starts_with("12"), "{}", f.output);
}

#[test]
fn foreground_run_forwards_signals_and_reports_the_exit_status() {
    let cfg = config(
        "fg",
        &[
            "sh",
            "-c",
            "trap 'exit 42' TERM; while :; do sleep 0.1; done",
        ],
    );
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() } as usize;
    let signaller = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(700));
        // SAFETY: the test thread is alive (it joins this thread) and blocks SIGTERM while
        // in foreground::run, so the signal lands in its signalfd.
        unsafe { libc::pthread_kill(me as libc::pthread_t, libc::SIGTERM) };
    });
    let code = container::foreground::run(&cfg, &state_root()).unwrap();
    signaller.join().unwrap();
    assert_eq!(code, 42);
    assert!(
        Container::load(&state_root(), &cfg.id).is_err(),
        "deleted after the run"
    );
}

#[test]
fn exec_runs_inside_the_namespaces_of_a_running_container() {
    let cfg = config("exec", &["sh", "-c", "echo marker > /tmp/m; sleep 30"]);
    let opts = CreateOptions {
        wait_for_start: false,
        ..CreateOptions::oci(state_root())
    };
    let c = Container::create(&cfg, &opts).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (mut reader, writer) = std::io::pipe().unwrap();
    let stdio = Stdio {
        stdin: None,
        stdout: Some(writer.as_raw_fd()),
        stderr: Some(writer.as_raw_fd()),
    };
    let p = container::ProcessConfig::new(vec![
        "sh".into(),
        "-c".into(),
        "cat /tmp/m; hostname; echo $$; grep Seccomp: /proc/self/status".into(),
    ]);
    let pid = c.exec(&p, stdio).unwrap();
    drop(writer);
    let mut out = String::new();
    reader.read_to_string(&mut out).unwrap();
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(libc::WEXITSTATUS(status), 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "marker", "same mount namespace: {out}");
    assert_eq!(lines[1], cfg.id, "same UTS namespace");
    assert_ne!(lines[2], "1", "a new pid in the container's pid namespace");
    assert!(
        lines[2].parse::<u32>().unwrap() < 100,
        "container pid, not host pid: {out}"
    );
    assert!(lines[3].contains('2'), "seccomp filter applied: {out}");
    c.delete(true).unwrap();
}

#[test]
fn snapshot_copies_the_upper_dir_of_a_running_container() {
    let cfg = config("snap", &["sh", "-c", "echo state > /root/data; sleep 30"]);
    let opts = CreateOptions {
        wait_for_start: false,
        ..CreateOptions::oci(state_root())
    };
    let c = Container::create(&cfg, &opts).unwrap();
    let _guard = Guard(cfg.id.clone());
    let upper = c.upper_dir().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !upper.join("root/data").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "container never wrote"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let dest = tempfile::tempdir().unwrap();
    let snap = dest.path().join("snap");
    c.snapshot_upper(&snap).unwrap();
    assert_eq!(
        std::fs::read_to_string(snap.join("root/data")).unwrap(),
        "state\n"
    );
    assert_eq!(c.status(), Status::Running, "thawed after the copy");
    c.delete(true).unwrap();
}

#[test]
fn bundle_seccomp_profile_is_enforced() {
    let bundle = runc_bundle(&[
        "sh",
        "-c",
        "mkdir /dev/shm/a 2>&1; echo rc=$?; touch /dev/shm/f && echo touched",
    ]);
    let path = bundle.path().join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["linux"]["seccomp"] = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EACCES}
        ]
    });
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    let spec = Spec::load(bundle.path()).unwrap();
    let cfg = to_config(&spec, &unique("seccomp"), bundle.path()).unwrap();
    let f = run(&cfg);
    assert!(f.output.contains("Permission denied"), "{}", f.output);
    assert!(f.output.contains("rc=1"), "{}", f.output);
    assert!(
        f.output.contains("touched"),
        "other calls still allowed: {}",
        f.output
    );
}
