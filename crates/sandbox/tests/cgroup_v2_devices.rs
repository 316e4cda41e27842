//! Device rules on a real cgroup v2 group: the eBPF program the sandbox attaches decides
//! which device nodes a task of the group may open, and a new rule set replaces the old
//! one. Runs wherever a unified hierarchy is mounted — pure v2 hosts and hybrid ones like
//! the CI machines (device programs work there without any v2 controller). Needs root.

use sandbox::cgroup::{CgroupManager, DeviceRule, Hierarchies, Resources, V2Manager};
use std::path::Path;
use std::process::Command;

fn rule(
    allow: bool,
    kind: char,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> DeviceRule {
    DeviceRule::new(allow, kind, major, minor, access)
}

/// Runs `script` in a shell that first moves itself into the group.
fn run_in(dir: &Path, script: &str) -> String {
    let procs = dir.join("cgroup.procs");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("echo $$ > {} && {script}", procs.display()))
        .output()
        .expect("spawn sh");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

const PROBE: &str = "cat /dev/null && echo null-read-ok; \
     head -c1 /dev/zero >/dev/null && echo zero-read-ok; \
     (echo x > /dev/zero) 2>/dev/null || echo zero-write-denied; \
     head -c1 /dev/urandom >/dev/null 2>&1 && echo urandom-ok || echo urandom-denied";

#[test]
fn device_program_filters_opens_and_is_replaced() {
    let hier = Hierarchies::from_host().expect("read mountinfo");
    let root = hier
        .unified()
        .expect("no cgroup2 hierarchy mounted: the v2 device filter cannot be tested")
        .to_path_buf();
    let rel = format!("kapsel-test-devices-{}", std::process::id());
    let group = V2Manager::new(root.clone(), Path::new(&rel));
    group.create().expect("create the v2 group");
    let dir = root.join(&rel);

    group
        .apply(&Resources {
            devices: vec![
                rule(false, 'a', None, None, "rwm"),
                rule(true, 'c', Some(1), Some(3), "rwm"),
                rule(true, 'c', Some(1), Some(5), "r"),
            ],
            ..Default::default()
        })
        .expect("attach the device program");
    let restricted = run_in(&dir, PROBE);

    group
        .apply(&Resources {
            devices: vec![rule(true, 'a', None, None, "rwm")],
            ..Default::default()
        })
        .expect("replace the device program");
    let open = run_in(&dir, PROBE);
    group.remove().expect("remove the group");

    for want in [
        "null-read-ok",
        "zero-read-ok",
        "zero-write-denied",
        "urandom-denied",
    ] {
        assert!(restricted.contains(want), "want {want}; got:\n{restricted}");
    }
    assert!(
        open.contains("urandom-ok"),
        "old program still attached:\n{open}"
    );
    assert!(!open.contains("zero-write-denied"), "{open}");
}

#[test]
fn device_rules_on_a_plain_directory_are_refused_with_its_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let group = V2Manager::new(tmp.path().to_path_buf(), Path::new("g"));
    group.create().expect("create");
    let err = group
        .apply(&Resources {
            devices: vec![rule(false, 'a', None, None, "rwm")],
            ..Default::default()
        })
        .expect_err("a plain directory cannot take a device program");
    let mut chain = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        chain += &format!(": {s}");
        source = s.source();
    }
    assert!(chain.contains("not in a cgroup v2 hierarchy"), "{chain}");
}
