//! Supervision with real VMM processes: restart policies after `kill -9` of a VMM, and a
//! daemon `kill -9` that leaves guests running and re-attached by the next daemon.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use api::daemon::{InstanceStatus, RestartPolicy};
use common::{alive, require_kvm, running, TestDaemon};

fn kill9(pid: i32) {
    // SAFETY: kill takes plain integers.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

#[test]
fn killed_vmm_is_restarted_per_policy() {
    require_kvm();
    let d = TestDaemon::start();
    let c = d.client();
    let on_failure = d.launch("onfail", "idle", RestartPolicy::OnFailure);
    let always = d.launch("always", "idle", RestartPolicy::Always);
    let never = d.launch("never", "idle", RestartPolicy::No);

    let (p1, p2, p3) = (
        on_failure.pid.unwrap(),
        always.pid.unwrap(),
        never.pid.unwrap(),
    );
    let t0 = Instant::now();
    for p in [p1, p2, p3] {
        kill9(p);
    }
    for (name, old) in [("onfail", p1), ("always", p2)] {
        let back = d.wait_for(name, "a restarted VMM", |i| {
            running(i) && i.pid.is_some_and(|p| p != old)
        });
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{name} back after {:?}",
            t0.elapsed()
        );
        assert_eq!(back.restarts, 1, "{back:?}");
        assert_eq!(back.last_exit.as_deref(), Some("signal 9"));
        assert!(alive(back.pid.unwrap()));
    }
    let failed = d.wait_for("never", "error state", |i| {
        i.status == InstanceStatus::Error
    });
    assert_eq!(failed.pid, None);

    // An explicit stop is not a failure: no restart even with `always`.
    c.stop("always", false).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(c.get("always").unwrap().status, InstanceStatus::Stopped);

    let mut kinds = Vec::new();
    c.events(0, false, |e| {
        if e.instance.as_deref() == Some("onfail") {
            kinds.push(e.kind);
        }
        true
    })
    .unwrap();
    assert!(
        kinds.ends_with(&["instance-exited".into(), "instance-restarted".into()]),
        "{kinds:?}"
    );
}

#[test]
fn daemon_kill9_leaves_guests_running_and_reattaches() {
    require_kvm();
    let mut d = TestDaemon::start();
    let a = d.launch("keep-a", "idle", RestartPolicy::OnFailure);
    let b = d.launch("keep-b", "idle", RestartPolicy::No);
    d.launch("was-stopped", "idle", RestartPolicy::No);
    d.client().stop("was-stopped", false).unwrap();
    let mut auto = common::request("auto", "idle", RestartPolicy::No);
    auto.autostart = true;
    auto.start = false;
    d.client().create(&auto).unwrap();
    let (pa, pb) = (a.pid.unwrap(), b.pid.unwrap());

    d.kill9();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(alive(pa) && alive(pb), "guests must survive the daemon");
    // The console is the VMM's own: it still answers with the daemon gone.
    let console = a.console.clone().unwrap();
    assert!(std::os::unix::net::UnixStream::connect(&console).is_ok());

    // While the daemon is away, one guest dies: the next daemon notices and applies policy.
    kill9(pb);
    d.spawn();
    let c = d.client();
    let a2 = c.get("keep-a").unwrap();
    assert!(running(&a2), "{a2:?}");
    assert_eq!(a2.pid, Some(pa), "re-attached to the same VMM");
    let b2 = d.wait_for("keep-b", "error state", |i| {
        i.status == InstanceStatus::Error
    });
    assert_eq!(b2.last_exit.as_deref(), Some("unknown"));
    assert_eq!(
        c.get("was-stopped").unwrap().status,
        InstanceStatus::Stopped
    );
    d.wait_for("auto", "autostart", running);

    // The re-attached VMM is supervised: killing it now restarts it.
    kill9(pa);
    d.wait_for("keep-a", "restart after re-attach", |i| {
        running(i) && i.pid.is_some_and(|p| p != pa)
    });
    // And it can be stopped normally.
    let s = c.stop("keep-a", false).unwrap();
    assert_eq!(s.status, InstanceStatus::Stopped);
}
