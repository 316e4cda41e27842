//! Supervision: one thread watches every VMM process through its pidfd (epoll), records how
//! it ended, and restarts it according to its policy with a growing delay while it keeps
//! failing. At daemon start, [`recover`] re-attaches to VMMs that survived a daemon restart.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::daemon::{InstanceKind, InstanceStatus, RestartPolicy};

use crate::error::{DaemonError, Result};
use crate::lifecycle::{self, StartReason};
use crate::process::{self, ExitStatus};
use crate::state::{Daemon, Proc};

/// A guest that ran at least this long before failing starts over with the base delay.
const STABLE_RUN: Duration = Duration::from_secs(10);
/// Longest delay between restarts of a crash-looping guest.
const MAX_DELAY: Duration = Duration::from_secs(60);

/// An epoll set of pidfds (event data = pid) plus the queue of pending restarts.
#[derive(Debug)]
pub struct Watcher {
    epoll: OwnedFd,
    pending: Mutex<Vec<(Instant, String)>>,
}

impl Watcher {
    pub fn new() -> Result<Self> {
        // SAFETY: epoll_create1 takes flags only and returns a new fd or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(DaemonError::io(
                "create",
                "epoll",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Watcher {
            // SAFETY: the fd was just created and is owned by nobody else.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            pending: Mutex::new(Vec::new()),
        })
    }

    /// Watches `pidfd`; its readiness reports `pid`.
    pub fn add(&self, pidfd: RawFd, pid: i32) -> Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: pid as u64,
        };
        // SAFETY: valid epoll fd, valid pidfd, and `ev` lives across the call.
        let r =
            unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, pidfd, &mut ev) };
        if r != 0 {
            return Err(DaemonError::io(
                "watch",
                format!("pid {pid}"),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    fn remove(&self, pidfd: RawFd) {
        // SAFETY: removing an fd from a valid epoll set; the event pointer may be null.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                pidfd,
                std::ptr::null_mut(),
            )
        };
    }

    /// Pids whose process ended, waiting at most `timeout`.
    fn wait(&self, timeout: Duration) -> Vec<i32> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 32];
        // SAFETY: the buffer holds 32 events and outlives the call.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                timeout.as_millis().min(i32::MAX as u128) as i32,
            )
        };
        if n <= 0 {
            return Vec::new();
        }
        events[..n as usize].iter().map(|e| e.u64 as i32).collect()
    }

    /// Queues a restart of `name` at `at`.
    pub fn schedule(&self, name: &str, at: Instant) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.retain(|(_, n)| n != name);
        p.push((at, name.to_string()));
    }

    fn take_due(&self) -> Vec<String> {
        let now = Instant::now();
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let (due, later): (Vec<_>, Vec<_>) = p.drain(..).partition(|(at, _)| *at <= now);
        *p = later;
        due.into_iter().map(|(_, n)| n).collect()
    }
}

/// Registers a new live process of `name`.
pub fn track(d: &Daemon, name: &str, proc_: Proc) -> Result<()> {
    let (fd, pid) = (proc_.pidfd.as_raw_fd(), proc_.pid);
    d.procs().insert(name.to_string(), proc_);
    d.watcher.add(fd, pid)
}

/// Whether a process that ended with `status` is restarted under `policy`.
pub fn should_restart(policy: RestartPolicy, status: ExitStatus) -> bool {
    match policy {
        RestartPolicy::No => false,
        RestartPolicy::OnFailure => !status.success(),
        RestartPolicy::Always => true,
    }
}

/// Delay before the next restart after `failures` quick failures in a row.
pub fn backoff(base: Duration, failures: u32) -> Duration {
    base.saturating_mul(1u32 << failures.min(16)).min(MAX_DELAY)
}

/// Runs the supervisor loop forever (its own thread).
pub fn run(d: Arc<Daemon>) {
    let mut failures: HashMap<String, u32> = HashMap::new();
    let mut last_net_check = Instant::now();
    loop {
        if last_net_check.elapsed() >= Duration::from_secs(2) {
            last_net_check = Instant::now();
            crate::network::supervise(&d);
        }
        for pid in d.watcher.wait(Duration::from_millis(200)) {
            on_exit(&d, pid, &mut failures);
        }
        for name in d.watcher.take_due() {
            restart(&d, &name);
        }
    }
}

fn on_exit(d: &Daemon, pid: i32, failures: &mut HashMap<String, u32>) {
    let Some(name) = d
        .procs()
        .iter()
        .find(|(_, p)| p.pid == pid)
        .map(|(n, _)| n.clone())
    else {
        return;
    };
    let container = d
        .db()
        .instance(&name)
        .is_ok_and(|(i, _)| i.kind == InstanceKind::Container);
    if container {
        // A killed monitor leaves its container running: end it before the instance
        // counts as stopped, whatever comes next.
        crate::container::ops::clean_up(d, &name);
    }
    let mut procs = d.procs();
    let Some(p) = procs.remove(&name) else {
        return;
    };
    d.watcher.remove(p.pidfd.as_raw_fd());
    let status = process::reap(pid);
    let exit = status.to_string();
    let mut db = d.db();
    let Ok((inst, _)) = db.instance(&name) else {
        return;
    };
    if p.stop_requested {
        let _ = db.set_stopped(&name, InstanceStatus::Stopped, Some(&exit));
        drop(db);
        drop(procs);
        d.event("instance-stopped", Some(&name), &exit);
        return;
    }
    let restart = should_restart(inst.config.restart, status);
    let next = if restart {
        InstanceStatus::Starting
    } else if status.success() {
        InstanceStatus::Stopped
    } else {
        InstanceStatus::Error
    };
    let _ = db.set_stopped(&name, next, Some(&exit));
    drop(db);
    drop(procs);
    d.event("instance-exited", Some(&name), &exit);
    if restart {
        let count = failures.entry(name.clone()).or_insert(0);
        if p.started.elapsed() >= STABLE_RUN {
            *count = 0;
        }
        let delay = backoff(d.config.restart_delay, *count);
        *count += 1;
        tracing::info!(instance = %name, ?delay, "restart scheduled");
        d.watcher.schedule(&name, Instant::now() + delay);
    }
}

fn restart(d: &Daemon, name: &str) {
    let Ok(_guard) = d.claim(name, "restart") else {
        return; // a user operation is in flight and decides what happens
    };
    match d.db().instance(name) {
        Ok((inst, _)) if inst.status == InstanceStatus::Starting => {}
        _ => return,
    }
    if d.procs().contains_key(name) {
        return;
    }
    match lifecycle::start(d, name, StartReason::Restart) {
        Ok(_) => {}
        Err(e) => {
            let line = e.line();
            tracing::warn!(instance = name, error = %line, "supervised restart failed");
            let _ = d.db().set_stopped(name, InstanceStatus::Error, Some(&line));
            d.event("instance-restart-failed", Some(name), &line);
        }
    }
}

/// Re-attaches to VMMs that outlived the previous daemon, settles the state of those that
/// did not, and starts autostart guests. Runs once before the API socket opens.
pub fn recover(d: &Daemon) -> Result<()> {
    let all = d.db().instances()?;
    for (inst, stored) in all {
        let name = inst.name.clone();
        let alive = stored.filter(|p| process::is_same_process(p.pid, p.start_time));
        if let Some(p) = alive {
            match process::pidfd_open(p.pid) {
                Ok(pidfd) => {
                    track(
                        d,
                        &name,
                        Proc {
                            pid: p.pid,
                            start_time: p.start_time,
                            pidfd,
                            stop_requested: inst.status == InstanceStatus::Stopping,
                            started: Instant::now(),
                        },
                    )?;
                    if !matches!(
                        inst.status,
                        InstanceStatus::Running | InstanceStatus::Paused
                    ) {
                        d.db().set_status(&name, InstanceStatus::Running)?;
                    }
                    d.event(
                        "instance-reattached",
                        Some(&name),
                        &format!("pid {}", p.pid),
                    );
                    continue;
                }
                Err(e) => tracing::warn!(instance = %name, error = %e, "cannot watch VMM"),
            }
        }
        if inst.kind == InstanceKind::Container {
            // Its monitor ended while the daemon was away: end what it left running.
            crate::container::ops::clean_up(d, &name);
        }
        let was_up = matches!(
            inst.status,
            InstanceStatus::Running | InstanceStatus::Starting | InstanceStatus::Paused
        );
        if was_up || inst.status == InstanceStatus::Stopping {
            let restart = was_up && should_restart(inst.config.restart, ExitStatus::Unknown);
            let next = if restart {
                InstanceStatus::Starting
            } else if was_up {
                InstanceStatus::Error
            } else {
                InstanceStatus::Stopped
            };
            d.db().set_stopped(&name, next, Some("unknown"))?;
            d.event(
                "instance-exited",
                Some(&name),
                "ended while the daemon was away",
            );
            if restart {
                d.watcher.schedule(&name, Instant::now());
                continue;
            }
        }
        if inst.config.autostart && !d.procs().contains_key(&name) {
            d.db().set_status(&name, InstanceStatus::Starting)?;
            d.watcher.schedule(&name, Instant::now());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies() {
        use ExitStatus::*;
        assert!(!should_restart(RestartPolicy::No, Signal(9)));
        assert!(should_restart(RestartPolicy::OnFailure, Signal(9)));
        assert!(should_restart(RestartPolicy::OnFailure, Code(3)));
        assert!(should_restart(RestartPolicy::OnFailure, Unknown));
        assert!(!should_restart(RestartPolicy::OnFailure, Code(0)));
        assert!(should_restart(RestartPolicy::Always, Code(0)));
    }

    #[test]
    fn backoff_grows_and_caps() {
        let b = Duration::from_millis(500);
        assert_eq!(backoff(b, 0), b);
        assert_eq!(backoff(b, 2), Duration::from_secs(2));
        assert_eq!(backoff(b, 40), MAX_DELAY);
    }

    #[test]
    fn due_restarts_are_taken_once() {
        let w = Watcher::new().unwrap();
        w.schedule("a", Instant::now());
        w.schedule("b", Instant::now() + Duration::from_secs(60));
        w.schedule("a", Instant::now());
        assert_eq!(w.take_due(), vec!["a".to_string()]);
        assert!(w.take_due().is_empty());
    }
}
