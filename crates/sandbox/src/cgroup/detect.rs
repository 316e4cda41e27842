//! Which cgroup hierarchies a host has, read from `/proc/self/mountinfo`.

use super::CgroupError;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A cgroup hierarchy version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// Controllers that a container's limits use.
pub const CONTROLLERS: [&str; 6] = ["cpu", "cpuacct", "cpuset", "memory", "pids", "blkio"];

/// The cgroup mounts of a host: v1 hierarchies by controller, and the unified one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hierarchies {
    v1: BTreeMap<String, PathBuf>,
    unified: Option<PathBuf>,
    unified_controllers: Vec<String>,
}

impl Hierarchies {
    /// Reads this host's mounts and the unified hierarchy's `cgroup.controllers`.
    pub fn from_host() -> Result<Self, CgroupError> {
        let path = Path::new("/proc/self/mountinfo");
        let text = std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut h = Self::from_mountinfo(&text);
        if let Some(root) = &h.unified {
            let ctl = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            h.unified_controllers = ctl.split_whitespace().map(str::to_string).collect();
        }
        Ok(h)
    }

    /// Parses mountinfo text (no controller list for the unified hierarchy).
    pub fn from_mountinfo(text: &str) -> Self {
        let mut h = Hierarchies::default();
        for line in text.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mountpoint) = pre.split(' ').nth(4) else {
                continue;
            };
            let mut post = post.split(' ');
            let (Some(fstype), Some(_src), Some(opts)) = (post.next(), post.next(), post.next())
            else {
                continue;
            };
            match fstype {
                "cgroup" => {
                    for opt in opts.split(',') {
                        if CONTROLLERS.contains(&opt) || opt == "freezer" || opt == "devices" {
                            h.v1.insert(opt.to_string(), PathBuf::from(mountpoint));
                        }
                    }
                }
                "cgroup2" => h.unified = Some(PathBuf::from(mountpoint)),
                _ => {}
            }
        }
        h
    }

    /// Sets the controllers the unified hierarchy offers (tests and callers that know).
    pub fn with_unified_controllers(mut self, ctl: &[&str]) -> Self {
        self.unified_controllers = ctl.iter().map(|s| s.to_string()).collect();
        self
    }

    /// The version serving `controller`, if any.
    pub fn version_of(&self, controller: &str) -> Option<Version> {
        if self.v1.contains_key(controller) {
            Some(Version::V1)
        } else if self.unified_controllers.iter().any(|c| c == controller)
            || (controller == "cpuacct" && self.unified_controllers.iter().any(|c| c == "cpu"))
        {
            Some(Version::V2)
        } else {
            None
        }
    }

    /// The backend to use: v1 if the memory, cpu or pids controller is on a v1 hierarchy
    /// (hybrid hosts), v2 if the unified hierarchy exists, none otherwise.
    pub fn preferred(&self) -> Option<Version> {
        let key = ["memory", "cpu", "pids"];
        if key.iter().any(|c| self.version_of(c) == Some(Version::V1)) {
            Some(Version::V1)
        } else if self.unified.is_some() {
            Some(Version::V2)
        } else {
            None
        }
    }

    /// v1 mount points by controller.
    pub fn v1_mounts(&self) -> BTreeMap<String, PathBuf> {
        self.v1.clone()
    }

    /// The unified hierarchy's mount point.
    pub fn unified(&self) -> Option<&Path> {
        self.unified.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const PURE_V2: &str =
        "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";

    #[test]
    fn hybrid_host_prefers_v1_per_controller() {
        let h = Hierarchies::from_mountinfo(HYBRID).with_unified_controllers(&["hugetlb"]);
        assert_eq!(h.version_of("memory"), Some(Version::V1));
        assert_eq!(h.version_of("hugetlb"), Some(Version::V2));
        assert_eq!(h.version_of("cpuset"), None);
        assert_eq!(h.preferred(), Some(Version::V1));
        assert_eq!(h.v1_mounts()["cpu"], PathBuf::from("/sys/fs/cgroup/cpu"));
        assert!(!h.v1_mounts().contains_key("name=systemd"));
    }

    #[test]
    fn pure_v2_host() {
        let h = Hierarchies::from_mountinfo(PURE_V2)
            .with_unified_controllers(&["cpu", "memory", "pids", "io"]);
        assert_eq!(h.preferred(), Some(Version::V2));
        assert_eq!(h.version_of("cpuacct"), Some(Version::V2));
        assert_eq!(h.unified(), Some(Path::new("/sys/fs/cgroup")));
    }

    #[test]
    fn no_cgroups_at_all() {
        assert_eq!(Hierarchies::from_mountinfo("").preferred(), None);
    }
}
