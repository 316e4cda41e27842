//! The CLI verbs against a real daemon: output, one-line errors and distinct exit codes.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{kapsel_bin, require_kvm, TestDaemon};

fn kapsel(d: &TestDaemon, args: &[&str]) -> Output {
    Command::new(kapsel_bin())
        .args(args)
        .env("KAPSEL_SOCKET", &d.socket)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn verbs_print_results_and_fail_with_one_line_and_distinct_codes() {
    require_kvm();
    let d = TestDaemon::start();
    let o = kapsel(
        &d,
        &[
            "launch",
            "tg",
            "cli-1",
            "--memory",
            "64M",
            "--cmdline",
            "test=idle",
            "--restart",
            "on-failure",
            "--cpu-cap",
            "50",
        ],
    );
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(text(&o).0.trim(), "cli-1 running");

    let o = kapsel(&d, &["list"]);
    let (out, _) = text(&o);
    assert!(out.starts_with("NAME"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("cli-1") && l.contains("running")),
        "{out}"
    );
    let o = kapsel(&d, &["list", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["config"]["cpu_cap_percent"], 50);

    let o = kapsel(
        &d,
        &["config", "set", "cli-1", "cpu.cap=25", "restart=always"],
    );
    assert!(o.status.success(), "{:?}", text(&o));
    let o = kapsel(&d, &["info", "cli-1"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["config"]["cpu_cap_percent"], 25);
    assert_eq!(v["config"]["restart"], "always");

    // The console: output replayed and streamed to a non-terminal client; input accepted.
    let mut child = Command::new(kapsel_bin())
        .args(["console", "cli-1"])
        .env("KAPSEL_SOCKET", &d.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let o = child.wait_with_output().unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("IDLE-READY") && out.contains("heartbeat"),
        "{out}"
    );
    assert!(err.contains("Detached from cli-1"), "{err}");

    // Errors: one line, named problem, distinct exit codes.
    let cases: [(&[&str], i32, &str); 6] = [
        (&["info", "nope"], 6, "instance 'nope' not found"),
        (&["start", "cli-1"], 7, "already running"),
        (&["launch", "tg", "Bad_Name"], 1, "invalid instance name"),
        (&["config", "set", "cli-1", "colour=red"], 1, "unknown key"),
        (
            &["snapshot", "restore", "cli-1", "s1"],
            6,
            "snapshot 's1' not found",
        ),
        (
            &["launch", "tg", "cli-1", "--memory", "64M"],
            7,
            "already exists",
        ),
    ];
    for (args, code, msg) in cases {
        let o = kapsel(&d, args);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(msg), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
    let o = Command::new(kapsel_bin())
        .args(["list"])
        .env("KAPSEL_SOCKET", d.dir.path().join("missing.sock"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(5));
    assert!(text(&o).1.contains("cannot reach the daemon"));

    let o = kapsel(&d, &["stop", "cli-1"]);
    assert_eq!(text(&o).0.trim(), "cli-1 stopped");
    let o = kapsel(&d, &["delete", "cli-1"]);
    assert!(o.status.success());
    let o = kapsel(&d, &["events"]);
    let (out, _) = text(&o);
    assert!(out.contains("instance-deleted"), "{out}");
}

#[test]
fn launch_takes_config_set_keys_checked_before_anything_is_made() {
    require_kvm();
    let d = TestDaemon::start();
    let o = kapsel(
        &d,
        &[
            "launch",
            "tg",
            "cfg-1",
            "--memory",
            "64M",
            "--cmdline",
            "test=idle",
            "-c",
            "memory.backing=prealloc",
            "-c",
            "balloon=32M",
            "--config",
            "restart=always",
        ],
    );
    assert!(o.status.success(), "{:?}\n{}", text(&o), d.log());
    let o = kapsel(&d, &["info", "cfg-1"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["status"], "running", "{v}");
    assert_eq!(v["config"]["memory_backing"], "prealloc", "{v}");
    assert_eq!(v["config"]["balloon_mib"], 32, "{v}");
    assert_eq!(v["config"]["restart"], "always", "{v}");
    // the VMM got them: its command line carries the backing and the balloon
    let pid = v["pid"].as_i64().unwrap();
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
    assert!(cmd.contains("--memory-backing prealloc"), "{cmd}");
    assert!(cmd.contains("--balloon"), "{cmd}");
    // a copy keeps them (they live only in the stored configuration)
    let o = kapsel(&d, &["stop", "--force", "cfg-1"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = kapsel(&d, &["copy", "cfg-1", "cfg-2"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = kapsel(&d, &["info", "cfg-2"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["config"]["memory_backing"], "prealloc", "{v}");
    assert_eq!(v["config"]["balloon_mib"], 32, "{v}");

    // a bad setting is one line, and nothing is created
    let cases: [(&str, i32, &str); 3] = [
        ("colour=red", 1, "unknown key"),
        ("balloon=1G", 1, "balloon"),
        ("memory.backing=gold", 1, "gold"),
    ];
    for (setting, code, msg) in cases {
        let o = kapsel(
            &d,
            &["launch", "tg", "cfg-bad", "--memory", "64M", "-c", setting],
        );
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(code), "{setting}: {err}");
        assert!(err.contains(msg), "{setting}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{setting}: {err}");
        let o = kapsel(&d, &["info", "cfg-bad"]);
        assert_eq!(
            o.status.code(),
            Some(6),
            "{setting} left an instance behind"
        );
    }
    assert!(!d.dir.path().join("state/instances/cfg-bad").exists());
}
