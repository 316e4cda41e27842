//! The host daemon's API (`kapsel daemon` on its UNIX socket): instances, images, networks,
//! events. Request bodies reject unknown fields so a typo is a 400, not a silent no-op.
//!
//! Routes (all JSON unless noted; errors are [`crate::ErrorBody`]):
//! - `GET /v1/host` → [`HostInfo`]
//! - `GET /v1/instances` → `[Instance]`; `POST /v1/instances` [`CreateInstance`] → 201 [`Instance`]
//! - `GET|DELETE /v1/instances/{name}` (`?force=true` deletes a running one)
//! - `POST /v1/instances/{name}/{start|stop|restart|pause|resume}` ([`StopRequest`] for stop)
//! - `PATCH /v1/instances/{name}` [`InstanceUpdate`] → [`Instance`] (live where possible)
//! - `POST /v1/instances/{name}/copy` [`CopyRequest`] → 201 [`Instance`]
//! - `GET /v1/images`, `POST /v1/images` [`ImportImage`], `DELETE /v1/images/{name}`
//! - `GET /v1/networks`, `POST /v1/networks` [`CreateNetwork`], `DELETE /v1/networks/{name}`
//! - `GET|POST /v1/instances/{name}/snapshots` ([`CreateSnapshot`]) → [`Snapshot`]s;
//!   `DELETE /v1/instances/{name}/snapshots/{snapshot}`
//! - `POST /v1/instances/{name}/exec` [`ExecRequest`] → [`ExecResult`] (containers), or with
//!   `interactive` a `101` upgrade to [`crate::exec_stream`]
//! - `GET /v1/events` (`?follow=true` streams newline-delimited [`Event`]s)
//! - `GET /metrics` (Prometheus text format)

use serde::{Deserialize, Serialize};

/// When the daemon brings a guest back after its VMM process ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never.
    #[default]
    No,
    /// When the VMM ended with a failure (non-zero exit, killed by a signal).
    OnFailure,
    /// Whenever it ended without a stop request.
    Always,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::No => "no",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "no" => Some(RestartPolicy::No),
            "on-failure" => Some(RestartPolicy::OnFailure),
            "always" => Some(RestartPolicy::Always),
            _ => None,
        }
    }
}

/// What an instance is: a VM (its own VMM process) or a container (its own monitor
/// process holding the container's pty). An image's kind decides its instances' kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceKind {
    #[default]
    Vm,
    Container,
}

impl InstanceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceKind::Vm => "vm",
            InstanceKind::Container => "container",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "vm" => Some(InstanceKind::Vm),
            "container" => Some(InstanceKind::Container),
            _ => None,
        }
    }
}

/// The lifecycle state of an instance as the daemon sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceStatus {
    Stopped,
    Starting,
    Running,
    /// The vCPUs are paused (the VMM process lives on).
    Paused,
    Stopping,
    /// The VMM ended with a failure and no restart is pending.
    Error,
}

impl InstanceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceStatus::Stopped => "stopped",
            InstanceStatus::Starting => "starting",
            InstanceStatus::Running => "running",
            InstanceStatus::Paused => "paused",
            InstanceStatus::Stopping => "stopping",
            InstanceStatus::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "stopped" => Some(InstanceStatus::Stopped),
            "starting" => Some(InstanceStatus::Starting),
            "running" => Some(InstanceStatus::Running),
            "paused" => Some(InstanceStatus::Paused),
            "stopping" => Some(InstanceStatus::Stopping),
            "error" => Some(InstanceStatus::Error),
            _ => None,
        }
    }
}

/// Everything an instance is configured with (stored, returned, partly changeable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    pub cpus: u16,
    pub memory_mib: u64,
    /// Appended to the image's kernel command line.
    #[serde(default)]
    pub cmdline: String,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default)]
    pub autostart: bool,
    /// Relative CPU weight under contention, 1..=10000 (cgroup v2 scale, 100 = default).
    #[serde(default)]
    pub cpu_weight: Option<u32>,
    /// CPU cap in percent of one host CPU (50 = half a core, 200 = two cores).
    #[serde(default)]
    pub cpu_cap_percent: Option<u32>,
    /// Host CPUs the VMM process may run on (cpuset list, e.g. `0-1` or `1`).
    #[serde(default)]
    pub cpuset: Option<String>,
    /// Memory limit of the whole VMM process in MiB (default: guest memory + overhead).
    #[serde(default)]
    pub memory_limit_mib: Option<u64>,
    /// VMs: guest RAM backing, `prealloc`, `lock`, `hugepages` comma-separated (the VMM's
    /// `--memory-backing`); empty is lazily allocated memory.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub memory_backing: String,
    /// VMs: I/O limits of the root disk (`disk0`), applied live and at every start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_limits: Option<crate::vm::IoLimit>,
    /// VMs: I/O limits of every network card, applied live and at every start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_limits: Option<crate::vm::NetLimits>,
    /// VMs: a memory balloon with this target in MiB (0: deflated); the balloon is added at
    /// start, its target changes live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon_mib: Option<u64>,
    /// Networks the instance has a NIC on (a container has at most one).
    #[serde(default)]
    pub networks: Vec<String>,
    /// Containers: the command to run (default `/bin/sh` on the container's console).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Containers: the most tasks (processes and threads) the container may have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<u64>,
}

/// One guest: its configuration and what the daemon knows of its process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    pub name: String,
    pub image: String,
    /// `vm` or `container` (from the image).
    #[serde(default)]
    pub kind: InstanceKind,
    pub status: InstanceStatus,
    pub config: InstanceConfig,
    /// The VMM process while one runs.
    pub pid: Option<i32>,
    /// Restarts done by the supervisor since the last explicit start.
    pub restarts: u32,
    /// Unix seconds.
    pub created_at: i64,
    /// How the last VMM process ended (`exit 0`, `signal 9`, `unknown`).
    pub last_exit: Option<String>,
    /// The serial console socket of the running VMM.
    pub console: Option<String>,
    /// The instance's root disk in the storage pool, if the image has one.
    pub disk: Option<String>,
    /// Containers on a network: the IPv4 address the daemon assigned (with prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// `POST /v1/instances`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateInstance {
    pub name: String,
    pub image: String,
    #[serde(default = "default_cpus")]
    pub cpus: u16,
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    #[serde(default)]
    pub cmdline: String,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default)]
    pub autostart: bool,
    #[serde(default)]
    pub cpu_weight: Option<u32>,
    #[serde(default)]
    pub cpu_cap_percent: Option<u32>,
    #[serde(default)]
    pub cpuset: Option<String>,
    #[serde(default)]
    pub memory_limit_mib: Option<u64>,
    #[serde(default)]
    pub networks: Vec<String>,
    /// Asks for this kind; an image of the other kind is refused (`launch --container`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<InstanceKind>,
    /// Containers: the command to run (default `/bin/sh`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Containers: the most tasks the container may have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<u64>,
    /// Start it right away (`launch`), or only create it (`init`).
    #[serde(default = "default_true")]
    pub start: bool,
    /// Settings as `PATCH` takes them (`launch -c key=value`), checked with the rest and in
    /// force from the first start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<InstanceUpdate>,
}

fn default_cpus() -> u16 {
    1
}
fn default_memory() -> u64 {
    256
}
fn default_true() -> bool {
    true
}

impl CreateInstance {
    /// The stored configuration this request asks for.
    pub fn config(&self) -> InstanceConfig {
        InstanceConfig {
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            cmdline: self.cmdline.clone(),
            restart: self.restart,
            autostart: self.autostart,
            cpu_weight: self.cpu_weight,
            cpu_cap_percent: self.cpu_cap_percent,
            cpuset: self.cpuset.clone(),
            memory_limit_mib: self.memory_limit_mib,
            memory_backing: String::new(),
            disk_limits: None,
            net_limits: None,
            balloon_mib: None,
            networks: self.networks.clone(),
            command: self.command.clone(),
            pids_limit: self.pids_limit,
        }
    }
}

/// `PATCH /v1/instances/{name}`: only the fields present change. CPU weight, cap, cpuset,
/// memory limit, restart policy and autostart apply at once; cpus, memory and cmdline at the
/// next start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autostart: Option<bool>,
    /// 0 clears the weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u32>,
    /// 0 clears the cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cap_percent: Option<u32>,
    /// Empty clears the pinning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuset: Option<String>,
    /// 0 goes back to the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_mib: Option<u64>,
    /// Containers: 0 clears the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<u64>,
    /// VMs, next start: `prealloc`, `lock`, `hugepages` comma-separated; empty clears.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_backing: Option<String>,
    /// VMs, live: the root disk's limits (all fields unset clears them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_limits: Option<crate::vm::IoLimit>,
    /// VMs, live: every network card's limits (all unset clears them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_limits: Option<crate::vm::NetLimits>,
    /// VMs: the balloon's target in MiB (live when the VMM has a balloon, else from the next
    /// start, which adds one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon_mib: Option<u64>,
}

/// `POST /v1/instances/{name}/stop`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    /// Kill the VMM (SIGKILL) instead of asking it to stop.
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/instances/{name}/copy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyRequest {
    pub new_name: String,
}

/// A snapshot of an instance: a VM's memory and device state (taken running or paused) and
/// its disk as a frozen copy-on-write layer, or a stopped VM's disk alone, or a container's
/// writable layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub instance: String,
    pub name: String,
    pub created_at: i64,
    /// The snapshot directory on the daemon's host.
    pub path: String,
    /// The guest's memory and device state are in the snapshot: restoring resumes the guest
    /// where it was. Otherwise only its disk (a VM taken while stopped: restoring boots it
    /// afresh if it was running, else leaves it stopped) or its files (a container) are.
    #[serde(default)]
    pub stateful: bool,
    /// A VM's disk as it was: a read-only qcow2 layer in the pool, never written again;
    /// restoring puts a fresh overlay over it. Null for instances without a disk.
    #[serde(default)]
    pub disk_layer: Option<String>,
}

/// `POST /v1/instances/{name}/snapshots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    pub name: String,
}

/// An image in the storage pool: a bootable VM image (kernel, initrd, disk) or a
/// container image (a root filesystem directory, `kernel` empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    pub name: String,
    /// `vm` or `container`.
    #[serde(default)]
    pub kind: InstanceKind,
    pub kernel: String,
    /// Container images: the root filesystem directory in the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<String>,
    pub initrd: Option<String>,
    pub disk: Option<String>,
    /// The image's base kernel command line.
    pub cmdline: String,
    pub size_bytes: u64,
    pub created_at: i64,
}

/// `POST /v1/images`: files on the daemon's host, copied into the pool. Either `kernel`
/// (a VM image) or `rootfs` (a container image: a directory or a tarball) is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportImage {
    pub name: String,
    #[serde(default)]
    pub kernel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<String>,
    #[serde(default)]
    pub initrd: Option<String>,
    #[serde(default)]
    pub disk: Option<String>,
    #[serde(default)]
    pub cmdline: Option<String>,
}

/// `POST /v1/instances/{name}/exec`: runs a command in a running container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub command: Vec<String>,
    /// Run it on a new pty (output and errors then arrive together in `stdout`).
    #[serde(default)]
    pub tty: bool,
    /// Kill it after this many seconds (default 60; no limit for an interactive exec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Stream the terminal instead of collecting output (needs `tty`): the connection is
    /// upgraded to [`crate::exec_stream`] frames.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interactive: bool,
    /// The terminal's size from the start (default 24 rows of 80 columns); later changes of
    /// an interactive exec come as frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<TermSize>,
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TermSize {
    pub rows: u16,
    pub cols: u16,
}

/// What an exec produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecResult {
    /// The exit code, 128 + signal number when killed.
    pub exit_code: i32,
    /// Output (lossy UTF-8, at most 1 MiB each).
    pub stdout: String,
    pub stderr: String,
}

/// A managed bridge network with DHCP/DNS and NAT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub name: String,
    pub bridge: String,
    /// The bridge's address with prefix, e.g. `10.77.0.1/24`.
    pub address: String,
    pub nat: bool,
    /// Whether the bridge, dnsmasq and NAT rules are in place right now.
    pub active: bool,
}

/// `POST /v1/networks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateNetwork {
    pub name: String,
    /// The bridge's address with prefix; guests get DHCP leases from the same subnet.
    pub address: String,
    #[serde(default = "default_true")]
    pub nat: bool,
}

/// A lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub id: i64,
    /// Unix milliseconds.
    pub time_ms: i64,
    /// `instance-created`, `instance-started`, `instance-exited`, `instance-restarted`, ...
    pub kind: String,
    pub instance: Option<String>,
    pub detail: String,
}

/// `GET /v1/host`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostInfo {
    pub version: String,
    /// `v1`, `v2` or `none`.
    pub cgroup: String,
    pub instances: usize,
    pub running: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_rejected() {
        let e = serde_json::from_str::<CreateInstance>(r#"{"name":"a","image":"i","cpu":2}"#);
        assert!(e.is_err());
        let e = serde_json::from_str::<InstanceUpdate>(r#"{"colour":"red"}"#);
        assert!(e.is_err());
    }

    #[test]
    fn create_defaults() {
        let c: CreateInstance = serde_json::from_str(r#"{"name":"a","image":"i"}"#).unwrap();
        assert_eq!((c.cpus, c.memory_mib, c.start), (1, 256, true));
        assert_eq!(c.restart, RestartPolicy::No);
    }

    #[test]
    fn policy_and_status_round_trip() {
        for p in [
            RestartPolicy::No,
            RestartPolicy::OnFailure,
            RestartPolicy::Always,
        ] {
            assert_eq!(RestartPolicy::parse(p.as_str()), Some(p));
            let j = serde_json::to_string(&p).unwrap();
            assert_eq!(j, format!("\"{}\"", p.as_str()));
        }
        for s in [
            InstanceStatus::Stopped,
            InstanceStatus::Starting,
            InstanceStatus::Running,
            InstanceStatus::Paused,
            InstanceStatus::Stopping,
            InstanceStatus::Error,
        ] {
            assert_eq!(InstanceStatus::parse(s.as_str()), Some(s));
        }
    }
}
