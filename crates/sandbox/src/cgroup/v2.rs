//! The cgroup v2 backend: one directory in the unified hierarchy.

use super::detect::Version;
use super::resources::{Resources, ThrottleKind};
use super::{devices, fs, CgroupError, CgroupManager, Stats};
use std::path::{Path, PathBuf};
use tracing::warn;

/// Controllers enabled for children on the way down to the group.
const DELEGATE: &str = "+cpu +cpuset +memory +pids +io";

/// A group in the unified hierarchy.
#[derive(Debug, Clone)]
pub struct V2Manager {
    root: PathBuf,
    rel: PathBuf,
}

impl V2Manager {
    /// A manager for group `rel` under the unified hierarchy mounted at `root`.
    pub fn new(root: PathBuf, rel: &Path) -> Self {
        V2Manager {
            root,
            rel: rel.to_path_buf(),
        }
    }

    fn dir(&self) -> PathBuf {
        self.root.join(&self.rel)
    }

    fn apply_cpu(&self, dir: &Path, res: &Resources) -> Result<(), CgroupError> {
        let weight = res
            .cpu_weight
            .map(|w| w.clamp(1, 10_000))
            .or(res.cpu_shares.map(Resources::shares_to_weight));
        if let Some(w) = weight {
            fs::write(dir, "cpu.weight", &w.to_string())?;
        }
        if res.cpu_quota.is_some() || res.cpu_period.is_some() {
            let period = res.cpu_period.unwrap_or(100_000);
            let quota = match res.cpu_quota {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".to_string(),
            };
            fs::write(dir, "cpu.max", &format!("{quota} {period}"))?;
        }
        Ok(())
    }

    fn apply_memory(&self, dir: &Path, res: &Resources) -> Result<(), CgroupError> {
        let bytes = |v: i64| {
            if v < 0 {
                "max".to_string()
            } else {
                v.to_string()
            }
        };
        if let Some(r) = res.memory_reservation {
            fs::write(dir, "memory.low", &bytes(r))?;
        }
        if let Some(l) = res.memory_limit {
            fs::write(dir, "memory.max", &bytes(l))?;
        }
        if let Some(s) = res.memory_swap {
            // v1 counts memory + swap; v2 limits swap alone.
            let swap = match (s, res.memory_limit) {
                (s, _) if s < 0 => "max".to_string(),
                (s, Some(l)) if l >= 0 => (s - l).max(0).to_string(),
                (s, _) => s.to_string(),
            };
            fs::write(dir, "memory.swap.max", &swap)?;
        }
        Ok(())
    }

    fn apply_io(&self, dir: &Path, res: &Resources) -> Result<(), CgroupError> {
        if let Some(w) = res.blkio_weight {
            // v1 weights are 10..1000, v2 1..10000.
            let w = (u64::from(w) * 10).clamp(1, 10_000);
            fs::write(dir, "io.weight", &format!("default {w}"))?;
        }
        for t in &res.blkio_throttle {
            let key = match t.kind {
                ThrottleKind::ReadBps => "rbps",
                ThrottleKind::WriteBps => "wbps",
                ThrottleKind::ReadIops => "riops",
                ThrottleKind::WriteIops => "wiops",
            };
            fs::write(
                dir,
                "io.max",
                &format!("{}:{} {key}={}", t.major, t.minor, t.rate),
            )?;
        }
        Ok(())
    }
}

impl CgroupManager for V2Manager {
    fn version(&self) -> Version {
        Version::V2
    }

    fn create(&self) -> Result<(), CgroupError> {
        let mut dir = self.root.clone();
        for comp in self.rel.components() {
            // Controllers must be enabled in each parent before a child can use them.
            if let Err(e) = fs::write(&dir, "cgroup.subtree_control", DELEGATE) {
                warn!("enabling controllers in {}: {e}", dir.display());
            }
            dir.push(comp);
            fs::mkdir_all(&dir)?;
        }
        Ok(())
    }

    fn apply(&self, res: &Resources) -> Result<(), CgroupError> {
        let dir = self.dir();
        self.apply_cpu(&dir, res)?;
        if let Some(c) = &res.cpuset_cpus {
            fs::write(&dir, "cpuset.cpus", c)?;
        }
        if let Some(m) = &res.cpuset_mems {
            fs::write(&dir, "cpuset.mems", m)?;
        }
        self.apply_memory(&dir, res)?;
        if let Some(p) = res.pids_limit {
            let v = if p <= 0 {
                "max".to_string()
            } else {
                p.to_string()
            };
            fs::write(&dir, "pids.max", &v)?;
        }
        self.apply_io(&dir, res)?;
        if !res.devices.is_empty() {
            devices::apply(&dir, &res.devices)?;
        }
        Ok(())
    }

    fn add_task(&self, pid: i32) -> Result<(), CgroupError> {
        fs::write(&self.dir(), "cgroup.procs", &pid.to_string())
    }

    fn procs_files(&self) -> Vec<std::path::PathBuf> {
        vec![self.dir().join("cgroup.procs")]
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        fs::pids(&self.dir())
    }

    fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        let dir = self.dir();
        fs::write(&dir, "cgroup.freeze", if frozen { "1" } else { "0" })?;
        for _ in 0..1000 {
            let events = fs::read(&dir, "cgroup.events")?;
            if (fs::keyed(&events, "frozen") == 1) == frozen {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Err(CgroupError::Parse {
            path: dir.join("cgroup.events"),
            content: "did not reach the requested freeze state".into(),
        })
    }

    fn stats(&self) -> Result<Stats, CgroupError> {
        let dir = self.dir();
        let cpu = fs::read(&dir, "cpu.stat").unwrap_or_default();
        Ok(Stats {
            cpu_usage_ns: fs::keyed(&cpu, "usage_usec") * 1000,
            memory_usage: fs::read_u64(&dir, "memory.current").unwrap_or(0),
            oom_kills: fs::keyed(
                &fs::read(&dir, "memory.events").unwrap_or_default(),
                "oom_kill",
            ),
            pids_current: fs::read_u64(&dir, "pids.current").unwrap_or(0),
        })
    }

    fn dirs(&self) -> Vec<(String, PathBuf)> {
        vec![(String::new(), self.dir())]
    }

    fn remove(&self) -> Result<(), CgroupError> {
        fs::remove_dir(&self.dir())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::resources::Throttle;

    fn read(root: &Path, f: &str) -> String {
        std::fs::read_to_string(root.join("kapsel/c1").join(f)).unwrap()
    }

    #[test]
    fn create_enables_controllers_in_each_parent() {
        let tmp = tempfile::tempdir().unwrap();
        let m = V2Manager::new(tmp.path().to_path_buf(), Path::new("kapsel/c1"));
        m.create().unwrap();
        let top = std::fs::read_to_string(tmp.path().join("cgroup.subtree_control")).unwrap();
        let mid =
            std::fs::read_to_string(tmp.path().join("kapsel/cgroup.subtree_control")).unwrap();
        assert_eq!(top, DELEGATE);
        assert_eq!(mid, DELEGATE);
        assert!(tmp.path().join("kapsel/c1").is_dir());
        assert!(!tmp.path().join("kapsel/c1/cgroup.subtree_control").exists());
    }

    #[test]
    fn writes_v2_files() {
        let tmp = tempfile::tempdir().unwrap();
        let m = V2Manager::new(tmp.path().to_path_buf(), Path::new("kapsel/c1"));
        m.create().unwrap();
        let res = Resources {
            cpu_shares: Some(1024),
            memory_limit: Some(64 << 20),
            memory_swap: Some(96 << 20),
            pids_limit: Some(-1),
            blkio_weight: Some(500),
            blkio_throttle: vec![Throttle {
                major: 8,
                minor: 0,
                kind: ThrottleKind::WriteIops,
                rate: 7,
            }],
            ..Resources::default().with_cpu_cap(0.5)
        };
        m.apply(&res).unwrap();
        assert_eq!(read(tmp.path(), "cpu.max"), "50000 100000");
        assert_eq!(read(tmp.path(), "cpu.weight"), "39");
        // a v2 weight given as such is written as it is
        let weighted = Resources {
            cpu_shares: Some(3072),
            cpu_weight: Some(300),
            ..Resources::default()
        };
        m.apply(&weighted).unwrap();
        assert_eq!(read(tmp.path(), "cpu.weight"), "300");
        assert_eq!(read(tmp.path(), "memory.max"), "67108864");
        assert_eq!(
            read(tmp.path(), "memory.swap.max"),
            (32u64 << 20).to_string()
        );
        assert_eq!(read(tmp.path(), "pids.max"), "max");
        assert_eq!(read(tmp.path(), "io.weight"), "default 5000");
        assert_eq!(read(tmp.path(), "io.max"), "8:0 wiops=7");
    }

    #[test]
    fn uncapped_cpu_writes_max() {
        let tmp = tempfile::tempdir().unwrap();
        let m = V2Manager::new(tmp.path().to_path_buf(), Path::new("kapsel/c1"));
        m.create().unwrap();
        m.apply(&Resources {
            cpu_quota: Some(-1),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(read(tmp.path(), "cpu.max"), "max 100000");
    }

    #[test]
    fn oom_kills_come_from_memory_events() {
        let tmp = tempfile::tempdir().unwrap();
        let m = V2Manager::new(tmp.path().to_path_buf(), Path::new("kapsel/c1"));
        m.create().unwrap();
        std::fs::write(
            tmp.path().join("kapsel/c1/memory.events"),
            "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n",
        )
        .unwrap();
        assert_eq!(m.stats().unwrap().oom_kills, 2);
    }
}
