//! The cgroup v1 backend: one directory per hierarchy, controller files by name.

use super::detect::Version;
use super::resources::{Resources, ThrottleKind};
use super::{fs, CgroupError, CgroupManager, Stats};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tracing::warn;

/// A group on v1 hierarchies.
#[derive(Debug, Clone)]
pub struct V1Manager {
    /// Hierarchy mount point by controller.
    mounts: BTreeMap<String, PathBuf>,
    /// The group's path relative to each hierarchy root.
    rel: PathBuf,
}

impl V1Manager {
    /// A manager for group `rel` on the v1 hierarchies `mounts` (controller → mount point).
    pub fn new(mounts: BTreeMap<String, PathBuf>, rel: &Path) -> Self {
        V1Manager {
            mounts,
            rel: rel.to_path_buf(),
        }
    }

    fn dir(&self, controller: &'static str) -> Result<PathBuf, CgroupError> {
        self.mounts
            .get(controller)
            .map(|m| m.join(&self.rel))
            .ok_or(CgroupError::MissingController(controller))
    }

    /// Every distinct group directory (co-mounted controllers share one).
    fn unique_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self.mounts.values().map(|m| m.join(&self.rel)).collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// A new cpuset group has no CPUs or memory nodes; copy them down from the parents.
    fn init_cpuset(&self) -> Result<(), CgroupError> {
        let Some(mount) = self.mounts.get("cpuset") else {
            return Ok(());
        };
        let mut dir = mount.clone();
        for comp in self.rel.components() {
            let parent = dir.clone();
            dir.push(comp);
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let own = fs::read(&dir, file)?;
                if own.trim().is_empty() {
                    let inherited = fs::read(&parent, file)?;
                    fs::write(&dir, file, inherited.trim())?;
                }
            }
        }
        Ok(())
    }

    fn apply_memory(&self, res: &Resources) -> Result<(), CgroupError> {
        let dir = self.dir("memory")?;
        if let Some(r) = res.memory_reservation {
            fs::write(&dir, "memory.soft_limit_in_bytes", &r.to_string())?;
        }
        let limit = res.memory_limit.map(|l| l.to_string());
        let swap = res.memory_swap.map(|s| s.to_string());
        let has_memsw = dir.join("memory.memsw.limit_in_bytes").exists();
        if swap.is_some() && !has_memsw {
            warn!("swap accounting is off on this host; memory.swap is not enforced");
        }
        let write_limit = || match &limit {
            Some(l) => fs::write(&dir, "memory.limit_in_bytes", l),
            None => Ok(()),
        };
        let write_swap = || match (&swap, has_memsw) {
            (Some(s), true) => fs::write(&dir, "memory.memsw.limit_in_bytes", s),
            _ => Ok(()),
        };
        // memsw must stay >= limit at every step: try both orders.
        if write_limit().and_then(|()| write_swap()).is_err() {
            write_swap()?;
            write_limit()?;
        }
        Ok(())
    }

    fn apply_cpu(&self, res: &Resources) -> Result<(), CgroupError> {
        if res.cpu_shares.is_none() && res.cpu_quota.is_none() && res.cpu_period.is_none() {
            return Ok(());
        }
        let dir = self.dir("cpu")?;
        if let Some(s) = res.cpu_shares {
            fs::write(&dir, "cpu.shares", &s.to_string())?;
        }
        if let Some(p) = res.cpu_period {
            fs::write(&dir, "cpu.cfs_period_us", &p.to_string())?;
        }
        if let Some(q) = res.cpu_quota {
            let q = if q <= 0 { -1 } else { q };
            fs::write(&dir, "cpu.cfs_quota_us", &q.to_string())?;
        }
        Ok(())
    }

    fn apply_blkio(&self, res: &Resources) -> Result<(), CgroupError> {
        if res.blkio_weight.is_none() && res.blkio_throttle.is_empty() {
            return Ok(());
        }
        let dir = self.dir("blkio")?;
        if let Some(w) = res.blkio_weight {
            let file = if dir.join("blkio.weight").exists() {
                "blkio.weight"
            } else {
                "blkio.bfq.weight"
            };
            fs::write(&dir, file, &w.to_string())?;
        }
        for t in &res.blkio_throttle {
            let file = match t.kind {
                ThrottleKind::ReadBps => "blkio.throttle.read_bps_device",
                ThrottleKind::WriteBps => "blkio.throttle.write_bps_device",
                ThrottleKind::ReadIops => "blkio.throttle.read_iops_device",
                ThrottleKind::WriteIops => "blkio.throttle.write_iops_device",
            };
            fs::write(&dir, file, &format!("{}:{} {}", t.major, t.minor, t.rate))?;
        }
        Ok(())
    }
}

impl CgroupManager for V1Manager {
    fn version(&self) -> Version {
        Version::V1
    }

    fn create(&self) -> Result<(), CgroupError> {
        for dir in self.unique_dirs() {
            fs::mkdir_all(&dir)?;
        }
        self.init_cpuset()
    }

    fn apply(&self, res: &Resources) -> Result<(), CgroupError> {
        self.apply_cpu(res)?;
        if let Some(c) = &res.cpuset_cpus {
            fs::write(&self.dir("cpuset")?, "cpuset.cpus", c)?;
        }
        if let Some(m) = &res.cpuset_mems {
            fs::write(&self.dir("cpuset")?, "cpuset.mems", m)?;
        }
        if res.memory_limit.is_some()
            || res.memory_swap.is_some()
            || res.memory_reservation.is_some()
        {
            self.apply_memory(res)?;
        }
        if let Some(p) = res.pids_limit {
            let v = if p <= 0 {
                "max".to_string()
            } else {
                p.to_string()
            };
            fs::write(&self.dir("pids")?, "pids.max", &v)?;
        }
        self.apply_blkio(res)?;
        if !res.devices.is_empty() {
            let dir = self.dir("devices")?;
            for rule in &res.devices {
                let file = if rule.allow {
                    "devices.allow"
                } else {
                    "devices.deny"
                };
                fs::write(&dir, file, &rule.v1_line())?;
            }
        }
        Ok(())
    }

    fn add_task(&self, pid: i32) -> Result<(), CgroupError> {
        for dir in self.unique_dirs() {
            fs::write(&dir, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    fn procs_files(&self) -> Vec<std::path::PathBuf> {
        self.unique_dirs()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let dir = match self.dir("pids").or_else(|_| self.dir("memory")) {
            Ok(d) => d,
            Err(_) => self
                .unique_dirs()
                .into_iter()
                .next()
                .ok_or(CgroupError::NoHierarchy)?,
        };
        fs::pids(&dir)
    }

    fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        let dir = self.dir("freezer")?;
        let want = if frozen { "FROZEN" } else { "THAWED" };
        fs::write(&dir, "freezer.state", want)?;
        for _ in 0..1000 {
            if fs::read(&dir, "freezer.state")?.trim() == want {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Err(CgroupError::Parse {
            path: dir.join("freezer.state"),
            content: "did not reach the requested state".into(),
        })
    }

    fn stats(&self) -> Result<Stats, CgroupError> {
        let mut s = Stats::default();
        if let Ok(dir) = self.dir("cpuacct") {
            s.cpu_usage_ns = fs::read_u64(&dir, "cpuacct.usage")?;
        }
        if let Ok(dir) = self.dir("memory") {
            s.memory_usage = fs::read_u64(&dir, "memory.usage_in_bytes")?;
            s.oom_kills = fs::keyed(&fs::read(&dir, "memory.oom_control")?, "oom_kill");
        }
        if let Ok(dir) = self.dir("pids") {
            s.pids_current = fs::read_u64(&dir, "pids.current")?;
        }
        Ok(s)
    }

    fn dirs(&self) -> Vec<(String, PathBuf)> {
        let mut out: Vec<(String, PathBuf)> = self
            .mounts
            .values()
            .filter_map(|m| {
                let name = m.file_name()?.to_string_lossy().into_owned();
                Some((name, m.join(&self.rel)))
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    fn remove(&self) -> Result<(), CgroupError> {
        let mut first_err = None;
        for dir in self.unique_dirs() {
            if let Err(e) = fs::remove_dir(&dir) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::resources::Throttle;

    fn fake(root: &Path) -> V1Manager {
        let mounts = [
            "cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "devices",
        ]
        .iter()
        .map(|c| (c.to_string(), root.join(c)))
        .collect();
        V1Manager::new(mounts, Path::new("kapsel/c1"))
    }

    #[test]
    fn writes_v1_files() {
        let tmp = tempfile::tempdir().unwrap();
        let m = fake(tmp.path());
        for c in ["cpu", "cpuacct", "memory", "pids", "blkio", "devices"] {
            std::fs::create_dir_all(tmp.path().join(c).join("kapsel/c1")).unwrap();
        }
        let res = Resources {
            cpu_shares: Some(512),
            memory_limit: Some(64 << 20),
            pids_limit: Some(32),
            blkio_throttle: vec![Throttle {
                major: 8,
                minor: 0,
                kind: ThrottleKind::ReadBps,
                rate: 1000,
            }],
            ..Resources::default().with_cpu_cap(0.5)
        };
        m.apply(&res).unwrap();
        let read = |c: &str, f: &str| {
            std::fs::read_to_string(tmp.path().join(c).join("kapsel/c1").join(f)).unwrap()
        };
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
        assert_eq!(read("cpu", "cpu.shares"), "512");
        assert_eq!(read("memory", "memory.limit_in_bytes"), "67108864");
        assert_eq!(read("pids", "pids.max"), "32");
        assert_eq!(read("blkio", "blkio.throttle.read_bps_device"), "8:0 1000");
    }

    #[test]
    fn cpuset_inherits_from_parents() {
        let tmp = tempfile::tempdir().unwrap();
        let m = fake(tmp.path());
        let cs = tmp.path().join("cpuset");
        std::fs::create_dir_all(cs.join("kapsel/c1")).unwrap();
        std::fs::write(cs.join("cpuset.cpus"), "0-1\n").unwrap();
        std::fs::write(cs.join("cpuset.mems"), "0\n").unwrap();
        for d in ["kapsel", "kapsel/c1"] {
            std::fs::write(cs.join(d).join("cpuset.cpus"), "").unwrap();
            std::fs::write(cs.join(d).join("cpuset.mems"), "").unwrap();
        }
        m.create().unwrap();
        assert_eq!(
            std::fs::read_to_string(cs.join("kapsel/c1/cpuset.cpus")).unwrap(),
            "0-1"
        );
        assert_eq!(
            std::fs::read_to_string(cs.join("kapsel/c1/cpuset.mems")).unwrap(),
            "0"
        );
    }

    #[test]
    fn missing_controller_is_named() {
        let m = V1Manager::new(BTreeMap::new(), Path::new("x"));
        let err = m
            .apply(&Resources::default().with_cpu_cap(0.5))
            .unwrap_err();
        assert!(err.to_string().contains("cpu controller"), "{err}");
    }
}
