//! Containers managed like VMs. Each running container has its own monitor process
//! (`kapsel container-monitor SPEC`, see [`monitor`]) in its own session: it creates the
//! container through the `container` crate, holds its pty and serves it on the instance's
//! console socket, wires its network, and exits with the container's exit status. The daemon
//! supervises the monitor by pidfd exactly as it supervises a VMM, so restart policies and
//! re-attaching after a daemon restart (even `kill -9`) work unchanged.
//!
//! - [`spec`]: what the daemon tells a monitor (a JSON file in the instance's run dir).
//! - [`monitor`] and [`relay`]: the monitor process and its console relay.
//! - [`net`]: the veth pair into a managed network's bridge and the daemon-assigned address.
//! - [`ops`]: exec, pause/resume (freezer), snapshots of the upper directory, live limits,
//!   copy, clean-up of what a dead monitor left behind.
//! - [`exec_tty`]: interactive exec, a pty relayed over the upgraded API connection.
//! - [`image`]: container images (a root filesystem directory or tarball) in the pool.

pub mod exec_tty;
pub mod image;
pub mod monitor;
pub mod net;
pub mod ops;
pub mod relay;
pub mod spec;

use std::path::PathBuf;

use crate::state::DaemonConfig;

impl DaemonConfig {
    /// The `container` crate's state root for the daemon's containers (on tmpfs: a container
    /// does not outlive a host reboot, its files in [`DaemonConfig::container_layer`] do).
    pub fn container_state_root(&self) -> PathBuf {
        self.run_dir.join("containers")
    }
    /// A container's writable layer (`upper/` and overlayfs's `work/`), kept across stops.
    pub fn container_layer(&self, name: &str) -> PathBuf {
        self.instance_dir(name).join("fs")
    }
    /// The spec file the daemon writes for a container's monitor.
    pub fn monitor_spec(&self, name: &str) -> PathBuf {
        self.instance_run_dir(name).join("monitor.json")
    }
    /// The container's cgroup path below each hierarchy root.
    pub fn container_cgroup(&self, name: &str) -> String {
        format!("{}/{name}", self.cgroup_root.trim_matches('/'))
    }
}
