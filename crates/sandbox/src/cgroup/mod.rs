//! Resource control through cgroups: one [`CgroupManager`] trait, a v1 and a v2 backend.
//!
//! Which backend serves a host is decided per controller from `/proc/self/mountinfo`
//! ([`detect::Hierarchies`]): a controller mounted as a v1 hierarchy is driven through v1
//! files; otherwise, if the unified hierarchy lists it in `cgroup.controllers`, through v2.

pub mod detect;
pub mod devices;
mod fs;
mod resources;
mod v1;
mod v2;

pub use detect::{Hierarchies, Version};
pub use resources::{DeviceRule, Resources, Throttle, ThrottleKind};
pub use v1::V1Manager;
pub use v2::V2Manager;

use std::path::PathBuf;
use thiserror::Error;

/// A cgroup operation failed.
#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {value:?} to {path}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create cgroup directory {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove cgroup directory {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {0} controller is not available on this host")]
    MissingController(&'static str),
    #[error("unexpected content in {path}: {content:?}")]
    Parse { path: PathBuf, content: String },
    #[error("cgroup path {0:?} must not contain '..'")]
    BadPath(String),
    #[error("no cgroup hierarchy is mounted")]
    NoHierarchy,
    #[error("cannot apply device rules")]
    Devices(#[from] devices::DeviceError),
}

/// Counters read back from a cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// CPU time used by the group, in nanoseconds.
    pub cpu_usage_ns: u64,
    /// Memory in use, in bytes.
    pub memory_usage: u64,
    /// How many times the OOM killer killed a task of the group.
    pub oom_kills: u64,
    /// Number of tasks.
    pub pids_current: u64,
}

/// One container's (or VMM's) cgroup, whatever the hierarchy version.
pub trait CgroupManager: std::fmt::Debug + Send {
    /// The hierarchy version.
    fn version(&self) -> Version;
    /// Creates the group's directories (idempotent).
    fn create(&self) -> Result<(), CgroupError>;
    /// Writes the limits of `res` (only the fields that are set).
    fn apply(&self, res: &Resources) -> Result<(), CgroupError>;
    /// Moves `pid` into the group.
    fn add_task(&self, pid: i32) -> Result<(), CgroupError>;
    /// The `cgroup.procs` files a process writes `0` into to join the group itself (one per
    /// v1 hierarchy, one for v2): lets a child join before `exec`, so everything it creates
    /// (threads, KVM's per-VM kernel workers) starts inside the group.
    fn procs_files(&self) -> Vec<std::path::PathBuf>;
    /// The pids in the group.
    fn pids(&self) -> Result<Vec<i32>, CgroupError>;
    /// Freezes (`true`) or thaws (`false`) every task of the group.
    fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError>;
    /// Counters: CPU time, memory, OOM kills, tasks.
    fn stats(&self) -> Result<Stats, CgroupError>;
    /// Host directories of the group, one per hierarchy, keyed by the name a container
    /// sees under `/sys/fs/cgroup` (`""` for the unified hierarchy).
    fn dirs(&self) -> Vec<(String, PathBuf)>;
    /// Removes the group's directories; the group must be empty.
    fn remove(&self) -> Result<(), CgroupError>;
}

/// Opens the manager for `path` (relative to each hierarchy root) on this host.
pub fn open(path: &str) -> Result<Box<dyn CgroupManager>, CgroupError> {
    let hier = Hierarchies::from_host()?;
    open_with(&hier, path)
}

/// Opens the manager for `path` on the hierarchies `hier`.
pub fn open_with(hier: &Hierarchies, path: &str) -> Result<Box<dyn CgroupManager>, CgroupError> {
    let rel = sanitize(path)?;
    match hier.preferred() {
        Some(Version::V1) => Ok(Box::new(V1Manager::new(hier.v1_mounts(), &rel))),
        Some(Version::V2) => {
            let root = hier.unified().ok_or(CgroupError::NoHierarchy)?;
            Ok(Box::new(V2Manager::new(root.to_path_buf(), &rel)))
        }
        None => Err(CgroupError::NoHierarchy),
    }
}

/// Strips leading slashes and rejects `..` so the group stays inside its hierarchy.
fn sanitize(path: &str) -> Result<PathBuf, CgroupError> {
    let trimmed = path.trim_start_matches('/');
    if trimmed.split('/').any(|c| c == "..") || trimmed.is_empty() {
        return Err(CgroupError::BadPath(path.to_string()));
    }
    Ok(PathBuf::from(trimmed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_rejects_escape_and_strips_root() {
        assert_eq!(sanitize("/kapsel/a").unwrap(), PathBuf::from("kapsel/a"));
        assert!(sanitize("/kapsel/../../etc").is_err());
        assert!(sanitize("/").is_err());
    }
}
