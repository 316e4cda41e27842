//! Per-guest cgroups through the `sandbox` crate (v1 and v2): the VMM process of each
//! instance lives in `<root>/<name>` with its CPU weight, CPU cap, cpuset and memory limit.

use api::daemon::InstanceConfig;
use sandbox::cgroup::{self, CgroupManager, Hierarchies, Resources, Stats};

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

use crate::error::{DaemonError, Result};

/// Extra memory the VMM process may use beyond guest RAM (its own heap, threads, tables).
pub const VMM_OVERHEAD_MIB: u64 = 128;
/// CFS period for CPU caps, in µs.
const PERIOD_US: u64 = 100_000;

/// The cgroups of all guests, under one root group.
#[derive(Debug)]
pub struct Cgroups {
    hier: Option<Hierarchies>,
    root: String,
    host_cpus: usize,
}

impl Cgroups {
    /// Detects this host's hierarchies; without any, cgroup limits are skipped (logged).
    pub fn detect(root: &str, host_cpus: usize) -> Self {
        let hier = Hierarchies::from_host()
            .ok()
            .filter(|h| h.preferred().is_some());
        if hier.is_none() {
            tracing::warn!("no cgroup hierarchy found: guest resource limits are disabled");
        }
        Cgroups {
            hier,
            root: root.trim_matches('/').to_string(),
            host_cpus,
        }
    }

    /// `v1`, `v2` or `none`.
    pub fn version(&self) -> &'static str {
        match self.hier.as_ref().and_then(|h| h.preferred()) {
            Some(cgroup::Version::V1) => "v1",
            Some(cgroup::Version::V2) => "v2",
            None => "none",
        }
    }

    fn manager(&self, name: &str) -> Result<Option<Box<dyn CgroupManager>>> {
        let Some(hier) = &self.hier else {
            return Ok(None);
        };
        Ok(Some(cgroup::open_with(
            hier,
            &format!("{}/{name}", self.root),
        )?))
    }

    /// Creates the group and writes its limits, before the guest's process exists; returns
    /// the files the new process writes `0` into to join the group before `exec`
    /// ([`join_before_exec`]), so the VMM's threads and the kernel workers KVM starts for
    /// its VM are all accounted and limited there from the first instruction.
    pub fn prepare(&self, name: &str, config: &InstanceConfig) -> Result<Vec<CString>> {
        let Some(m) = self.configured(name, config)? else {
            return Ok(Vec::new());
        };
        m.procs_files()
            .into_iter()
            .map(|p| {
                CString::new(p.as_os_str().as_bytes()).map_err(|_| {
                    DaemonError::io(
                        "open",
                        &p,
                        std::io::Error::from(std::io::ErrorKind::InvalidInput),
                    )
                })
            })
            .collect()
    }

    /// Rewrites the limits of a running guest's group.
    pub fn update(&self, name: &str, config: &InstanceConfig) -> Result<()> {
        self.configured(name, config).map(drop)
    }

    /// The guest's group, created and holding the limits of `config` (`None` without
    /// cgroups).
    fn configured(
        &self,
        name: &str,
        config: &InstanceConfig,
    ) -> Result<Option<Box<dyn CgroupManager>>> {
        let Some(m) = self.manager(name)? else {
            return Ok(None);
        };
        m.create()?;
        m.apply(&resources(config, self.host_cpus))?;
        Ok(Some(m))
    }

    /// Writes `res` to the guest's group (a container's live limits).
    pub fn apply(&self, name: &str, res: &Resources) -> Result<()> {
        if let Some(m) = self.manager(name)? {
            m.apply(res)?;
        }
        Ok(())
    }

    /// Freezes or thaws every process of the guest's group (containers' pause/resume).
    pub fn set_frozen(&self, name: &str, frozen: bool) -> Result<()> {
        if let Some(m) = self.manager(name)? {
            m.set_frozen(frozen)?;
        }
        Ok(())
    }

    /// CPU time and memory of the guest's group.
    pub fn stats(&self, name: &str) -> Option<Stats> {
        self.manager(name).ok().flatten()?.stats().ok()
    }

    /// Removes the group (it must be empty); a missing group is fine.
    pub fn remove(&self, name: &str) {
        if let Ok(Some(m)) = self.manager(name) {
            if let Err(e) = m.remove() {
                tracing::warn!(instance = name, error = %e, "cannot remove cgroup");
            }
        }
    }
}

/// Moves the calling process into the groups whose `cgroup.procs` files are `files` (from
/// [`Cgroups::prepare`]). Only raw system calls on memory made before `fork`, so it is safe
/// in a `pre_exec` hook.
pub fn join_before_exec(files: &[CString]) -> std::io::Result<()> {
    for f in files {
        // SAFETY: `f` is a NUL-terminated path that outlives the call; open, write and close
        // are async-signal-safe and the buffer is a static byte string.
        unsafe {
            let fd = libc::open(f.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if n != 1 {
                return Err(err);
            }
        }
    }
    Ok(())
}

/// The cgroup limits for a configuration. Unset values write the defaults, so clearing a
/// limit with `config set` takes effect on a running guest.
pub fn resources(c: &InstanceConfig, host_cpus: usize) -> Resources {
    let weight = u64::from(c.cpu_weight.unwrap_or(100));
    let quota = c
        .cpu_cap_percent
        .map_or(-1, |p| (u64::from(p) * PERIOD_US / 100) as i64);
    let limit_mib = c
        .memory_limit_mib
        .unwrap_or(c.memory_mib + VMM_OVERHEAD_MIB);
    Resources {
        cpu_shares: Some(weight_to_shares(weight)),
        cpu_weight: Some(weight),
        cpu_period: Some(PERIOD_US),
        cpu_quota: Some(quota),
        cpuset_cpus: Some(
            c.cpuset
                .clone()
                .unwrap_or_else(|| format!("0-{}", host_cpus.saturating_sub(1))),
        ),
        memory_limit: Some((limit_mib << 20) as i64),
        ..Resources::default()
    }
}

/// The cgroup limits of a container: memory is the limit itself (no VMM overhead), `cpus`
/// caps it at that many host CPUs unless a cap is set, and the pids limit applies.
pub fn container_resources(c: &InstanceConfig, host_cpus: usize) -> Resources {
    let mut r = resources(c, host_cpus);
    let limit_mib = c.memory_limit_mib.unwrap_or(c.memory_mib);
    r.memory_limit = Some((limit_mib << 20) as i64);
    if c.cpu_cap_percent.is_none() && usize::from(c.cpus) < host_cpus {
        r.cpu_quota = Some((u64::from(c.cpus) * PERIOD_US) as i64);
    }
    r.pids_limit = Some(c.pids_limit.map_or(-1, |p| p.min(i64::MAX as u64) as i64));
    r
}

/// v2 `cpu.weight` (1..=10000, 100 default) to v1 `cpu.shares` (1024 default).
pub fn weight_to_shares(weight: u64) -> u64 {
    (weight * 1024 / 100).clamp(2, 262_144)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::config;

    #[test]
    fn defaults_are_written_explicitly() {
        let r = resources(&config(), 2);
        assert_eq!(r.cpu_shares, Some(1024));
        assert_eq!(r.cpu_weight, Some(100));
        assert_eq!(r.cpu_quota, Some(-1));
        assert_eq!(r.memory_limit, Some((192i64) << 20));
        assert_eq!(r.cpuset_cpus.as_deref(), Some("0-1"));
    }

    #[test]
    fn container_limits() {
        let mut c = config();
        c.pids_limit = Some(32);
        let r = container_resources(&c, 2);
        assert_eq!(r.memory_limit, Some(64i64 << 20));
        assert_eq!(r.cpu_quota, Some(100_000));
        assert_eq!(r.pids_limit, Some(32));
        c.pids_limit = None;
        c.cpus = 2;
        let r = container_resources(&c, 2);
        assert_eq!((r.cpu_quota, r.pids_limit), (Some(-1), Some(-1)));
    }

    #[test]
    fn cap_and_weight() {
        let mut c = config();
        c.cpu_cap_percent = Some(50);
        c.cpu_weight = Some(300);
        let r = resources(&c, 2);
        assert_eq!((r.cpu_quota, r.cpu_period), (Some(50_000), Some(100_000)));
        assert_eq!(r.cpu_shares, Some(3072));
        assert_eq!(weight_to_shares(1), 10);
        assert_eq!(weight_to_shares(10_000), 102_400);
    }
}
