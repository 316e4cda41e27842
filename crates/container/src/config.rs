//! The one validated description of a container, built from an OCI bundle or the CLI.

use sandbox::caps::Capabilities;
use sandbox::cgroup::Resources;
use sandbox::namespace::Namespace;
use sandbox::rlimit::Rlimit;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where the root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootfsSource {
    /// A directory used in place (OCI `root.path`), bind-mounted onto itself.
    Bind(PathBuf),
    /// Image directories as overlayfs lower layers (first is topmost) with a per-container
    /// writable upper directory under the state directory.
    Overlay(Vec<PathBuf>),
}

/// The process to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessConfig {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub terminal: bool,
    pub capabilities: Capabilities,
    pub rlimits: Vec<Rlimit>,
    pub no_new_privileges: bool,
    pub oom_score_adj: Option<i32>,
}

impl ProcessConfig {
    /// A root process with the default capability set and a standard PATH.
    pub fn new(args: Vec<String>) -> Self {
        ProcessConfig {
            args,
            env: vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                "TERM=xterm".into(),
            ],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            terminal: false,
            capabilities: Capabilities::uniform(sandbox::caps::CapSet::default_container()),
            rlimits: Vec::new(),
            no_new_privileges: true,
            oom_score_adj: None,
        }
    }
}

/// A filesystem to mount inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountConfig {
    pub destination: String,
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

impl MountConfig {
    fn new(dest: &str, kind: &str, source: &str, options: &[&str]) -> Self {
        MountConfig {
            destination: dest.into(),
            kind: kind.into(),
            source: source.into(),
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// A device node to create under `/dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    pub path: String,
    /// `c`, `b`, `u` or `p`.
    pub kind: char,
    pub major: i64,
    pub minor: i64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// A user-namespace id mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    pub container_id: u32,
    pub host_id: u32,
    pub size: u32,
}

/// Which seccomp filter to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeccompPolicy {
    /// [`sandbox::seccomp::default_profile`].
    Default,
    /// A profile from the bundle's `linux.seccomp`.
    Profile(sandbox::seccomp::Profile),
    /// No filter (explicitly asked for).
    Unconfined,
}

/// Everything needed to create one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerConfig {
    pub id: String,
    pub rootfs: RootfsSource,
    /// With an overlay root: keep the writable layer in `<dir>/upper` (and overlayfs's
    /// `<dir>/work`) instead of the state directory, so it outlives the container (the
    /// daemon's containers keep their files across stop and start).
    pub overlay_upper: Option<PathBuf>,
    pub rootfs_readonly: bool,
    pub hostname: Option<String>,
    pub process: ProcessConfig,
    /// Namespaces to create, or to join when a path is given.
    pub namespaces: Vec<(Namespace, Option<PathBuf>)>,
    pub uid_mappings: Vec<IdMap>,
    pub gid_mappings: Vec<IdMap>,
    pub mounts: Vec<MountConfig>,
    pub devices: Vec<DeviceNode>,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    pub sysctl: BTreeMap<String, String>,
    pub resources: Resources,
    pub cgroups_path: String,
    pub seccomp: SeccompPolicy,
    /// Mount propagation of `/` inside the container (`MS_*` flags).
    pub rootfs_propagation: u64,
    /// The OCI bundle directory, if any.
    pub bundle: Option<PathBuf>,
    pub annotations: BTreeMap<String, String>,
}

/// The device nodes every container gets (OCI "default devices").
pub fn default_devices() -> Vec<DeviceNode> {
    let c = |path: &str, major, minor| DeviceNode {
        path: path.into(),
        kind: 'c',
        major,
        minor,
        mode: 0o666,
        uid: 0,
        gid: 0,
    };
    vec![
        c("/dev/null", 1, 3),
        c("/dev/zero", 1, 5),
        c("/dev/full", 1, 7),
        c("/dev/random", 1, 8),
        c("/dev/urandom", 1, 9),
        c("/dev/tty", 5, 0),
    ]
}

/// `/proc` and `/sys` paths hidden or made read-only by default (as `runc spec` lists them).
pub const DEFAULT_MASKED: [&str; 10] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];
pub const DEFAULT_READONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

impl ContainerConfig {
    /// A container with every namespace, the standard mounts, default devices, masked
    /// paths, capabilities and seccomp profile: what `kapsel container run` uses.
    pub fn new(id: &str, rootfs: RootfsSource, args: Vec<String>) -> Self {
        let mounts = vec![
            MountConfig::new("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
            MountConfig::new(
                "/dev",
                "tmpfs",
                "tmpfs",
                &["nosuid", "strictatime", "mode=755", "size=65536k"],
            ),
            MountConfig::new(
                "/dev/pts",
                "devpts",
                "devpts",
                &[
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                    "gid=5",
                ],
            ),
            MountConfig::new(
                "/dev/shm",
                "tmpfs",
                "shm",
                &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            ),
            MountConfig::new(
                "/dev/mqueue",
                "mqueue",
                "mqueue",
                &["nosuid", "noexec", "nodev"],
            ),
            MountConfig::new(
                "/sys",
                "sysfs",
                "sysfs",
                &["nosuid", "noexec", "nodev", "ro"],
            ),
            MountConfig::new(
                "/sys/fs/cgroup",
                "cgroup",
                "cgroup",
                &["nosuid", "noexec", "nodev", "relatime", "ro"],
            ),
        ];
        ContainerConfig {
            id: id.into(),
            rootfs,
            overlay_upper: None,
            rootfs_readonly: false,
            hostname: Some(id.into()),
            process: ProcessConfig::new(args),
            namespaces: [
                Namespace::Pid,
                Namespace::Network,
                Namespace::Ipc,
                Namespace::Uts,
                Namespace::Mount,
                Namespace::Cgroup,
            ]
            .into_iter()
            .map(|n| (n, None))
            .collect(),
            uid_mappings: Vec::new(),
            gid_mappings: Vec::new(),
            mounts,
            devices: default_devices(),
            masked_paths: DEFAULT_MASKED.iter().map(|s| s.to_string()).collect(),
            readonly_paths: DEFAULT_READONLY.iter().map(|s| s.to_string()).collect(),
            sysctl: BTreeMap::new(),
            resources: Resources::default(),
            cgroups_path: format!("/kapsel/{id}"),
            seccomp: SeccompPolicy::Default,
            rootfs_propagation: libc::MS_REC | libc::MS_PRIVATE,
            bundle: None,
            annotations: BTreeMap::new(),
        }
    }

    /// Whether the container gets namespace `ns` (new or joined).
    pub fn has_namespace(&self, ns: Namespace) -> bool {
        self.namespaces.iter().any(|(n, _)| *n == ns)
    }

    /// Adds a user namespace mapping container root to `host_id` for `size` ids.
    pub fn with_user_namespace(mut self, host_id: u32, size: u32) -> Self {
        if !self.has_namespace(Namespace::User) {
            self.namespaces.push((Namespace::User, None));
        }
        let map = IdMap {
            container_id: 0,
            host_id,
            size,
        };
        self.uid_mappings = vec![map];
        self.gid_mappings = vec![map];
        self
    }
}

/// A container id: 1..=64 characters of `[A-Za-z0-9_.-]`, not starting with `.`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(valid_id("web-1.a_b"));
        assert!(!valid_id(""));
        assert!(!valid_id("../x"));
        assert!(!valid_id(".hidden"));
        assert!(!valid_id(&"a".repeat(65)));
    }

    #[test]
    fn default_config_isolates_everything_but_users() {
        let c = ContainerConfig::new("c", RootfsSource::Bind("/r".into()), vec!["sh".into()]);
        for ns in [
            Namespace::Pid,
            Namespace::Mount,
            Namespace::Network,
            Namespace::Cgroup,
        ] {
            assert!(c.has_namespace(ns));
        }
        assert!(!c.has_namespace(Namespace::User));
        let c = c.with_user_namespace(100_000, 65_536);
        assert!(c.has_namespace(Namespace::User));
        assert_eq!(c.uid_mappings[0].host_id, 100_000);
    }
}
