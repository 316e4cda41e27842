//! The `kapsel-oci` binary driven the way container engines drive runc.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Runs kapsel-oci with stdout and stderr in files, not pipes: a created container inherits
/// them and would keep a pipe open for as long as it runs.
fn oci(root: &std::path::Path, args: &[&str]) -> Output {
    let out = tempfile::tempfile().unwrap();
    let err = tempfile::tempfile().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_kapsel-oci"))
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap())
        .status()
        .unwrap();
    let read = |mut f: std::fs::File| {
        use std::io::{Read, Seek};
        let mut v = Vec::new();
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut v).unwrap();
        v
    };
    Output {
        status,
        stdout: read(out),
        stderr: read(err),
    }
}

fn bundle(args: &[&str], edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    assert!(Command::new("runc")
        .arg("spec")
        .current_dir(dir.path())
        .status()
        .unwrap()
        .success());
    let path = dir.path().join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["root"]["path"] = busybox().display().to_string().into();
    v["process"]["terminal"] = false.into();
    v["process"]["args"] = args.iter().map(|s| serde_json::Value::from(*s)).collect();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    dir
}

fn status(root: &std::path::Path, id: &str) -> String {
    let out = oci(root, &["state", id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["status"].as_str().unwrap().to_string()
}

#[test]
fn create_start_exec_kill_delete_through_the_binary() {
    let root = tempfile::tempdir().unwrap();
    let b = bundle(&["sleep", "30"], |_| {});
    let id = unique("cli");
    let pid_file = b.path().join("pid");
    let bs = b.path().to_str().unwrap();
    let out = oci(
        root.path(),
        &[
            "create",
            "--bundle",
            bs,
            "--pid-file",
            pid_file.to_str().unwrap(),
            &id,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read_to_string(&pid_file)
            .unwrap()
            .parse::<i32>()
            .unwrap()
            > 1
    );
    assert_eq!(status(root.path(), &id), "created");
    assert!(oci(root.path(), &["start", &id]).status.success());
    assert_eq!(status(root.path(), &id), "running");
    let out = oci(
        root.path(),
        &["exec", &id, "--", "sh", "-c", "hostname; exit 3"],
    );
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "runc");
    let out = oci(root.path(), &["delete", &id]);
    assert!(!out.status.success(), "a running container needs --force");
    assert!(oci(root.path(), &["kill", &id, "KILL"]).status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while status(root.path(), &id) != "stopped" {
        assert!(Instant::now() < deadline, "never stopped");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(oci(root.path(), &["delete", &id]).status.success());
    assert!(!oci(root.path(), &["state", &id]).status.success());
}

#[test]
fn unsupported_fields_are_named_in_the_error() {
    let root = tempfile::tempdir().unwrap();
    let b = bundle(&["true"], |v| {
        v["linux"]["intelRdt"] = serde_json::json!({"closID": "x"});
        v["hooks"] = serde_json::json!({"prestart": [{"path": "/bin/true"}]});
    });
    let out = oci(
        root.path(),
        &[
            "create",
            "--bundle",
            b.path().to_str().unwrap(),
            &unique("unsup"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unsupported OCI config field(s): hooks, linux.intelRdt"),
        "{err}"
    );
}
