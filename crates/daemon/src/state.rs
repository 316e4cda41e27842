//! The daemon's shared state: the database, the live VMM processes, busy markers for
//! operations in flight, the event bus and the process watcher.
//!
//! Lock order: `procs` before `db`, never the other way round.

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use api::daemon::Event;

use crate::cgroups::Cgroups;
use crate::db::Db;
use crate::error::{DaemonError, Result};
use crate::events::EventBus;
use crate::supervisor::Watcher;

/// Where the daemon keeps things and how it starts VMMs.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// SQLite database, images and instance disks (`/var/lib/kapsel`).
    pub state_dir: PathBuf,
    /// Sockets: the API socket's default home and each VMM's console socket (`/run/kapsel`).
    pub run_dir: PathBuf,
    /// The API socket.
    pub socket: PathBuf,
    /// The `kapsel` binary that runs VMMs (`kapsel run ...`).
    pub vmm_bin: PathBuf,
    /// Parent cgroup of all guests, relative to each hierarchy root.
    pub cgroup_root: String,
    /// First delay before a supervised restart (doubles while a guest keeps failing).
    pub restart_delay: Duration,
    /// How long `stop` waits for a clean exit before killing the VMM.
    pub stop_timeout: Duration,
}

impl DaemonConfig {
    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("kapsel.db")
    }
    pub fn image_dir(&self, name: &str) -> PathBuf {
        self.state_dir.join("images").join(name)
    }
    /// Frozen, read-only disk layers shared by linked clones (see `disks.rs`).
    pub fn layer_dir(&self) -> PathBuf {
        self.state_dir.join("layers")
    }
    pub fn instance_dir(&self, name: &str) -> PathBuf {
        self.state_dir.join("instances").join(name)
    }
    pub fn instance_run_dir(&self, name: &str) -> PathBuf {
        self.run_dir.join("instances").join(name)
    }
    /// The VMM's control API socket (pause, resume, snapshot).
    pub fn api_socket(&self, name: &str) -> PathBuf {
        self.instance_run_dir(name).join("api.sock")
    }
    pub fn console_socket(&self, name: &str) -> PathBuf {
        self.instance_run_dir(name).join("console.sock")
    }
    pub fn snapshot_dir(&self, name: &str, snapshot: &str) -> PathBuf {
        self.instance_dir(name).join("snapshots").join(snapshot)
    }
    pub fn vmm_log(&self, name: &str) -> PathBuf {
        self.instance_dir(name).join("vmm.log")
    }
}

/// A live VMM process.
#[derive(Debug)]
pub struct Proc {
    pub pid: i32,
    pub start_time: u64,
    pub pidfd: OwnedFd,
    /// A stop was requested: its end is not a failure and triggers no restart.
    pub stop_requested: bool,
    pub started: Instant,
}

/// The daemon: everything request handlers and the supervisor share.
pub struct Daemon {
    pub config: DaemonConfig,
    db: Mutex<Db>,
    procs: Mutex<HashMap<String, Proc>>,
    busy: Mutex<HashSet<String>>,
    pub events: EventBus,
    pub watcher: Watcher,
    pub cgroups: Cgroups,
    pub host_cpus: usize,
    pub host_memory_mib: u64,
    pub started: Instant,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("config", &self.config)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Marks an instance busy while an operation on it runs; dropped, it frees it.
#[derive(Debug)]
pub struct BusyGuard<'a> {
    daemon: &'a Daemon,
    name: String,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        lock(&self.daemon.busy).remove(&self.name);
    }
}

impl Daemon {
    /// Opens the state and the watcher; does not start or re-attach anything yet.
    pub fn new(config: DaemonConfig) -> Result<Self> {
        for dir in [
            config.state_dir.clone(),
            config.state_dir.join("images"),
            config.state_dir.join("instances"),
            config.run_dir.join("instances"),
        ] {
            std::fs::create_dir_all(&dir).map_err(|e| DaemonError::io("create", &dir, e))?;
        }
        let db = Db::open(&config.db_path())?;
        let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let host_memory_mib = host_memory_mib();
        let cgroups = Cgroups::detect(&config.cgroup_root, host_cpus);
        Ok(Daemon {
            config,
            db: Mutex::new(db),
            procs: Mutex::new(HashMap::new()),
            busy: Mutex::new(HashSet::new()),
            events: EventBus::default(),
            watcher: Watcher::new()?,
            cgroups,
            host_cpus,
            host_memory_mib,
            started: Instant::now(),
        })
    }

    pub fn db(&self) -> MutexGuard<'_, Db> {
        lock(&self.db)
    }

    pub fn procs(&self) -> MutexGuard<'_, HashMap<String, Proc>> {
        lock(&self.procs)
    }

    /// Claims `name` for one operation; a second concurrent operation gets a 409.
    pub fn claim(&self, name: &str, what: &str) -> Result<BusyGuard<'_>> {
        if !lock(&self.busy).insert(name.to_string()) {
            return Err(DaemonError::Conflict(format!(
                "instance '{name}' is busy with another operation; retry {what} later"
            )));
        }
        Ok(BusyGuard {
            daemon: self,
            name: name.to_string(),
        })
    }

    /// Stores and publishes an event; a storage failure is logged, never fatal.
    pub fn event(&self, kind: &str, instance: Option<&str>, detail: &str) {
        tracing::info!(kind, instance, detail, "event");
        let stored = self.db().add_event(kind, instance, detail);
        match stored {
            Ok(ev) => self.events.publish(&ev),
            Err(e) => {
                tracing::warn!(error = %e.line(), "cannot store event");
                self.events.publish(&Event {
                    id: 0,
                    time_ms: 0,
                    kind: kind.into(),
                    instance: instance.map(str::to_string),
                    detail: detail.into(),
                });
            }
        }
    }
}

/// Total RAM of this host in MiB, from `/proc/meminfo`.
fn host_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(u64::MAX >> 20, |kb| kb >> 10)
}
