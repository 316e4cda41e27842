//! The monitor's instructions: written by the daemon before it spawns the monitor (atomically:
//! temp file, fsync, rename), read once by the monitor at its start.

use std::io::Write;
use std::path::{Path, PathBuf};

use api::daemon::InstanceConfig;
use serde::{Deserialize, Serialize};

use crate::error::{DaemonError, Result};

/// Everything a monitor needs to create and run one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorSpec {
    /// The instance (and container) name.
    pub name: String,
    /// The image's root filesystem: the overlay's lower layer.
    pub rootfs: PathBuf,
    /// The instance's writable layer (`upper/`, `work/`).
    pub layer: PathBuf,
    /// The `container` crate's state root.
    pub state_root: PathBuf,
    /// Cgroup path below each hierarchy root.
    pub cgroup: String,
    /// Limits and command.
    pub config: InstanceConfig,
    pub host_cpus: usize,
    /// The console socket the monitor serves (its existence means "running").
    pub console: PathBuf,
    /// How long a stop waits for the container's first process before SIGKILL.
    pub stop_timeout_ms: u64,
    /// The network interface, if the container is on a managed network.
    pub net: Option<NetSpec>,
}

/// One veth pair into a bridge with a static address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetSpec {
    pub bridge: String,
    /// The host end's name.
    pub host_if: String,
    pub mac: String,
    /// The container's address with prefix, e.g. `10.77.0.254/24`.
    pub address: String,
    /// The bridge's address: the default route.
    pub gateway: String,
    /// The file bind-mounted (read-only) as the container's `/etc/resolv.conf`.
    #[serde(default)]
    pub resolv_conf: Option<PathBuf>,
}

impl MonitorSpec {
    /// The command to run: the configured one, or a shell on the console.
    pub fn command(&self) -> Vec<String> {
        if self.config.command.is_empty() {
            vec!["/bin/sh".into()]
        } else {
            self.config.command.clone()
        }
    }

    /// Writes the spec to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| DaemonError::Corrupt(format!("monitor spec: {e}")))?;
        let tmp = path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| DaemonError::io("write", path, e))
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read(path).map_err(|e| DaemonError::io("read", path, e))?;
        serde_json::from_slice(&text)
            .map_err(|e| DaemonError::Corrupt(format!("monitor spec {}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_default_command() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = MonitorSpec {
            name: "c".into(),
            rootfs: "/img".into(),
            layer: "/layer".into(),
            state_root: "/run/c".into(),
            cgroup: "kapsel/c".into(),
            config: serde_json::from_str(r#"{"cpus":1,"memory_mib":64}"#).unwrap(),
            host_cpus: 2,
            console: "/run/c.sock".into(),
            stop_timeout_ms: 1000,
            net: None,
        };
        assert_eq!(spec.command(), ["/bin/sh"]);
        spec.config.command = vec!["httpd".into(), "-f".into()];
        let p = dir.path().join("monitor.json");
        spec.save(&p).unwrap();
        assert_eq!(MonitorSpec::load(&p).unwrap(), spec);
        std::fs::write(&p, "{").unwrap();
        assert!(MonitorSpec::load(&p).is_err());
    }
}
