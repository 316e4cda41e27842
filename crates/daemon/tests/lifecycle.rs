//! Instance lifecycle through the daemon with real VMM processes running the test guest:
//! launch, list, console, stop, start, restart, delete, events, and hostile callers.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use api::daemon::{InstanceStatus, InstanceUpdate, RestartPolicy};
use client::ClientError;
use common::{alive, request, require_kvm, running, status_of, TestDaemon};

/// Reads from a console socket until `marker` shows up (or 5 s pass).
fn console_until(path: &str, marker: &str) -> String {
    let mut s = UnixStream::connect(path).expect("console connect");
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut out = String::new();
    let mut buf = [0u8; 4096];
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !out.contains(marker) && std::time::Instant::now() < deadline {
        if let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    out
}

#[test]
fn launch_list_console_stop_start_restart_delete() {
    require_kvm();
    let d = TestDaemon::start();
    let c = d.client();
    let inst = d.launch("web-1", "idle", RestartPolicy::No);
    assert_eq!(inst.status, InstanceStatus::Running, "{inst:?}");
    let pid = inst.pid.expect("pid");
    assert!(alive(pid));

    let list = c.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].name, "web-1");
    assert!(running(&list[0]));

    // The console replays earlier output to a late attacher and streams heartbeats.
    let console = inst.console.clone().expect("console socket");
    let text = console_until(&console, "heartbeat 2");
    assert!(text.contains("IDLE-READY"), "{text}");
    assert!(text.contains("heartbeat 2"), "{text}");

    // The VMM is in its cgroup with the default limits.
    let procs = std::fs::read_to_string(d.cgroup_dir("cpu", "web-1").join("cgroup.procs"))
        .unwrap_or_default();
    assert!(
        procs.lines().any(|l| l.trim() == pid.to_string()),
        "{procs}"
    );

    // Prometheus metrics carry the guest's counters.
    let m = c.metrics().unwrap();
    for line in [
        "kapsel_instance_up{name=\"web-1\"} 1",
        "kapsel_instance_cpu_seconds_total{name=\"web-1\"}",
        "kapsel_instance_memory_bytes{name=\"web-1\"}",
        "kapsel_instance_disk_read_bytes_total{name=\"web-1\"}",
        "kapsel_daemon_rss_bytes",
    ] {
        assert!(m.contains(line), "{line} missing in\n{m}");
    }

    let stopped = c.stop("web-1", false).unwrap();
    assert_eq!(stopped.status, InstanceStatus::Stopped);
    assert!(!alive(pid));
    assert_eq!(status_of(c.stop("web-1", false)), 409);

    let started = c.start("web-1").unwrap();
    assert!(running(&started));
    let pid2 = started.pid.unwrap();
    assert_ne!(pid2, pid);
    assert_eq!(status_of(c.start("web-1")), 409);

    let restarted = c.restart("web-1").unwrap();
    assert!(running(&restarted));
    assert!(!alive(pid2));

    // Live configuration: the cap lands in the cgroup at once.
    let upd = InstanceUpdate {
        cpu_cap_percent: Some(30),
        ..Default::default()
    };
    let after = c.update("web-1", &upd).unwrap();
    assert_eq!(after.config.cpu_cap_percent, Some(30));
    let quota =
        std::fs::read_to_string(d.cgroup_dir("cpu", "web-1").join("cpu.cfs_quota_us")).unwrap();
    assert_eq!(quota.trim(), "30000");

    // Pause and resume go through the VMM's control API; the guest stops beating while paused.
    let paused = c.pause("web-1").unwrap();
    assert_eq!(paused.status, InstanceStatus::Paused);
    assert_eq!(status_of(c.pause("web-1")), 409);
    assert_eq!(c.resume("web-1").unwrap().status, InstanceStatus::Running);
    assert_eq!(status_of(c.resume("web-1")), 409);

    // Snapshots: taken through the VMM API (paused for it, running again after), here once
    // the guest is past its boot banner (so a restored guest shows none).
    let text = console_until(&restarted.console.clone().expect("console"), "heartbeat 1");
    assert!(text.contains("heartbeat 1"), "{text}");
    let ep = c.endpoint();
    let r = ep
        .request_raw(
            "POST",
            "/v1/instances/web-1/snapshots",
            br#"{"name":"snap1"}"#,
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let snap: api::daemon::Snapshot = serde_json::from_slice(&r.body).unwrap();
    assert!(std::path::Path::new(&snap.path).join("state").exists());
    assert_eq!(c.get("web-1").unwrap().status, InstanceStatus::Running);
    let r = ep
        .request_raw(
            "POST",
            "/v1/instances/web-1/snapshots",
            br#"{"name":"snap1"}"#,
        )
        .unwrap();
    assert_eq!(r.status, 409);
    // Restore: a new VMM resumes the snapshot (no fresh boot: no IDLE-READY, heartbeats go
    // on) with the instance's console, running or stopped before.
    for stop_first in [false, true] {
        let before = c.get("web-1").unwrap().pid;
        if stop_first {
            c.stop("web-1", true).unwrap();
        }
        let restored = c
            .restore_snapshot("web-1", "snap1")
            .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
        assert_eq!(restored.status, InstanceStatus::Running, "{restored:?}");
        let pid = restored.pid.expect("pid");
        assert!(alive(pid));
        assert_ne!(Some(pid), before);
        assert!(!alive(before.unwrap()));
        let text = console_until(&restored.console.expect("console"), "heartbeat");
        assert!(text.contains("heartbeat"), "{text}");
        assert!(
            !text.contains("IDLE-READY"),
            "rebooted instead of resumed (stopped first: {stop_first}): {text}"
        );
    }
    assert_eq!(status_of(c.restore_snapshot("web-1", "nosnap")), 404);
    let r = ep
        .request_raw("GET", "/v1/instances/web-1/snapshots", b"")
        .unwrap();
    let list: Vec<api::daemon::Snapshot> = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(list.len(), 1);
    let r = ep
        .request_raw("DELETE", "/v1/instances/web-1/snapshots/snap1", b"")
        .unwrap();
    assert_eq!(r.status, 204);
    assert!(!std::path::Path::new(&snap.path).exists());

    assert_eq!(status_of(c.delete("web-1", false)), 409);
    c.delete("web-1", true).unwrap();
    assert!(c.list().unwrap().is_empty());
    assert!(!d.cgroup_dir("cpu", "web-1").exists());

    let mut kinds = Vec::new();
    c.events(0, false, |e| {
        if e.instance.as_deref() == Some("web-1") {
            kinds.push(e.kind);
        }
        true
    })
    .unwrap();
    let expected = [
        "instance-created",
        "instance-started",
        "instance-stopped",
        "instance-started",
        "instance-stopped",
        "instance-started",
        "instance-updated",
        "instance-paused",
        "instance-resumed",
        "snapshot-created",
        "instance-stopped",
        "instance-started",
        "snapshot-restored",
        "instance-stopped",
        "instance-started",
        "snapshot-restored",
        "snapshot-deleted",
        "instance-stopped",
        "instance-deleted",
    ];
    assert_eq!(kinds, expected);
}

#[test]
fn hostile_callers_get_clear_4xx_and_state_stays_consistent() {
    require_kvm();
    let d = TestDaemon::start();
    let c = d.client();
    for bad in ["", "UPPER", "1abc", "a_b", "../etc", "a b", "x-"] {
        let mut r = request("ok", "idle", RestartPolicy::No);
        r.name = bad.into();
        r.start = false;
        assert_eq!(status_of(c.create(&r)), 400, "name {bad:?}");
    }
    let mut r = request("sizes", "idle", RestartPolicy::No);
    r.start = false;
    for (cpus, mem) in [(0u16, 64u64), (9999, 64), (1, u64::MAX), (1, 1)] {
        r.cpus = cpus;
        r.memory_mib = mem;
        assert_eq!(status_of(c.create(&r)), 400, "cpus {cpus} memory {mem}");
    }
    let mut r = request("noimg", "idle", RestartPolicy::No);
    r.image = "nope".into();
    assert_eq!(status_of(c.create(&r)), 400);

    // Raw bodies: unknown keys, wrong types, garbage, a huge body.
    let ep = c.endpoint();
    for body in [
        &br#"{"name":"a","image":"tg","colour":"red"}"#[..],
        br#"{"name":"a","image":"tg","cpus":"two"}"#,
        b"\xff\xfe garbage",
        br#"[1,2,3]"#,
    ] {
        let resp = ep.request_raw("POST", "/v1/instances", body).unwrap();
        assert_eq!(resp.status, 400, "{}", String::from_utf8_lossy(body));
        let err: api::ErrorBody = serde_json::from_slice(&resp.body).unwrap();
        assert!(!err.error.contains('\n'));
    }
    let huge = vec![b'x'; 2 << 20];
    let resp = ep.request_raw("POST", "/v1/instances", &huge);
    if let Ok(resp) = resp {
        assert_eq!(resp.status, 413);
    }
    assert_eq!(
        ep.request_raw("PUT", "/v1/instances", b"").unwrap().status,
        405
    );
    assert_eq!(
        ep.request_raw("GET", "/v2/whatever", b"").unwrap().status,
        404
    );
    assert_eq!(
        ep.request_raw("PATCH", "/v1/instances/none", b"{\"cpus\":2}")
            .unwrap()
            .status,
        404
    );

    // Duplicate names, also when racing.
    let mut ok = request("dup", "idle", RestartPolicy::No);
    ok.start = false;
    c.create(&ok).unwrap();
    assert_eq!(status_of(c.create(&ok)), 409);
    // Copies: same configuration, stopped; a taken or invalid new name is refused.
    let copy = c.copy("dup", "dup-copy").unwrap();
    assert_eq!(copy.status, InstanceStatus::Stopped);
    assert_eq!(copy.config, c.get("dup").unwrap().config);
    assert_eq!(status_of(c.copy("dup", "dup-copy")), 409);
    assert_eq!(status_of(c.copy("dup", "Bad")), 400);
    assert_eq!(status_of(c.copy("nope", "x")), 404);
    c.delete("dup-copy", false).unwrap();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let c = d.client();
            let mut r = request("race", "idle", RestartPolicy::No);
            r.start = false;
            std::thread::spawn(move || {
                c.create(&r).map(|_| 201).unwrap_or_else(|e| match e {
                    ClientError::Status { status, .. } => status,
                    e => panic!("{e}"),
                })
            })
        })
        .collect();
    let mut codes: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    codes.sort();
    assert_eq!(codes[0], 201);
    assert!(codes[1..].iter().all(|&s| s == 409), "{codes:?}");

    // Conflicting operations on one instance: exactly one start wins.
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let c = d.client();
            std::thread::spawn(move || {
                c.start("race").map(|_| 200).unwrap_or_else(|e| match e {
                    ClientError::Status { status, .. } => status,
                    e => panic!("{e}"),
                })
            })
        })
        .collect();
    let codes: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(codes.iter().filter(|&&s| s == 200).count(), 1, "{codes:?}");
    assert!(codes.iter().all(|&s| s == 200 || s == 409), "{codes:?}");

    // Bad updates are refused and change nothing.
    let before = c.get("race").unwrap();
    for upd in [
        InstanceUpdate {
            cpu_cap_percent: Some(100_000),
            ..Default::default()
        },
        InstanceUpdate {
            cpuset: Some("99".into()),
            ..Default::default()
        },
        InstanceUpdate {
            memory_mib: Some(u64::MAX),
            ..Default::default()
        },
    ] {
        assert_eq!(status_of(c.update("race", &upd)), 400);
    }
    assert_eq!(c.get("race").unwrap().config, before.config);

    let list = c.list().unwrap();
    let names: Vec<&str> = list.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["dup", "race"]);
    assert_eq!(c.host().unwrap().running, 1);
}

/// `VmLck` of a process in KiB.
fn locked_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn memory_backing_applies_at_start_and_bad_values_are_400() {
    require_kvm();
    let d = TestDaemon::start();
    let c = d.client();
    let mut r = request("locked", "idle", RestartPolicy::No);
    r.start = false;
    c.create(&r).unwrap();
    let set = |v: &str| InstanceUpdate {
        memory_backing: Some(v.into()),
        ..Default::default()
    };
    assert_eq!(status_of(c.update("locked", &set("prealloc,huge"))), 400);
    let upd = c.update("locked", &set("prealloc,lock")).unwrap();
    assert_eq!(upd.config.memory_backing, "prealloc,lock");
    // locked guest memory: all 64 MiB of it pinned in the VMM
    let inst = c
        .start("locked")
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    let pid = inst.pid.expect("pid");
    let lck = locked_kib(pid);
    assert!(lck >= 64 << 10, "VmLck {lck} KiB");
    c.stop("locked", true).unwrap();

    // hugepages with none free: the start fails with the VMM's one line
    let free = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("HugePages_Free:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    if free == "0" {
        c.update("locked", &set("hugepages")).unwrap();
        match c.start("locked") {
            Err(ClientError::Status { status, message }) => {
                assert_eq!(status, 422, "{message}");
                assert!(message.contains("nr_hugepages"), "{message}");
            }
            other => panic!("hugepages without a pool started: {other:?}"),
        }
    }
    // cleared: back to lazily allocated memory
    c.update("locked", &set("")).unwrap();
    let inst = c.start("locked").unwrap();
    assert_eq!(locked_kib(inst.pid.expect("pid")), 0);
    c.delete("locked", true).unwrap();
}

#[test]
fn disk_limits_apply_live_and_at_every_start() {
    require_kvm();
    let d = TestDaemon::start();
    let c = d.client();
    let disk = d.dir.path().join("disk.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    c.import_image(&api::daemon::ImportImage {
        name: "tgd".into(),
        kernel: common::test_guest().display().to_string(),
        rootfs: None,
        initrd: None,
        disk: Some(disk.display().to_string()),
        cmdline: Some("console=ttyS0".into()),
    })
    .unwrap();
    let mut r = request("lim", "idle", RestartPolicy::No);
    r.image = "tgd".into();
    c.create(&r).unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    let vm = client::vm::VmClient::new(client::Endpoint::new(
        d.dir.path().join("run/instances/lim/api.sock"),
    ));
    assert!(vm.disk_limits("disk0").unwrap().is_unlimited());
    let limit = api::vm::IoLimit {
        bytes_per_sec: Some(10 << 20),
        ops_per_sec: Some(500),
        ..Default::default()
    };
    let set = |l: api::vm::IoLimit| InstanceUpdate {
        disk_limits: Some(l),
        ..Default::default()
    };
    // live: the running VMM's disk is limited at once
    let inst = c.update("lim", &set(limit)).unwrap();
    assert_eq!(
        inst.config.disk_limits.unwrap().bytes_per_sec,
        Some(10 << 20)
    );
    let now = vm.disk_limits("disk0").unwrap();
    assert_eq!(
        (now.bytes_per_sec, now.ops_per_sec),
        (Some(10 << 20), Some(500))
    );
    // and again after a restart (a new VMM)
    c.restart("lim").unwrap();
    let now = vm.disk_limits("disk0").unwrap();
    assert_eq!(now.bytes_per_sec, Some(10 << 20), "after restart");
    // bad limits are 400, NICs the instance lacks are no error, clearing works
    let bad = api::vm::IoLimit {
        bytes_burst: Some(5),
        ..Default::default()
    };
    assert_eq!(status_of(c.update("lim", &set(bad))), 400);
    let cleared = c.update("lim", &set(api::vm::IoLimit::default())).unwrap();
    assert_eq!(cleared.config.disk_limits, None);
    assert!(vm.disk_limits("disk0").unwrap().is_unlimited());
    // an instance without a disk has none to limit
    c.create(&request("nodisk", "idle", RestartPolicy::No))
        .unwrap();
    assert_eq!(status_of(c.update("nodisk", &set(limit))), 400);
}

#[test]
fn balloon_target_set_live_and_added_at_start() {
    require_kvm();
    let d = TestDaemon::start();
    let c = d.client();
    c.create(&request("bal", "idle", RestartPolicy::No))
        .unwrap();
    let set = |mib: u64| InstanceUpdate {
        balloon_mib: Some(mib),
        ..Default::default()
    };
    // started without a balloon: stored, from the next start
    assert_eq!(
        c.update("bal", &set(16)).unwrap().config.balloon_mib,
        Some(16)
    );
    assert_eq!(
        status_of(c.update("bal", &set(65))),
        400,
        "above guest memory"
    );
    c.restart("bal")
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    let vm = client::vm::VmClient::new(client::Endpoint::new(
        d.dir.path().join("run/instances/bal/api.sock"),
    ));
    assert_eq!(vm.balloon().unwrap().target_mib, 16);
    // now live
    c.update("bal", &set(32)).unwrap();
    assert_eq!(vm.balloon().unwrap().target_mib, 32);
    // a balloon cannot free locked memory
    let lock = InstanceUpdate {
        memory_backing: Some("lock".into()),
        ..Default::default()
    };
    assert_eq!(status_of(c.update("bal", &lock)), 400);
}
