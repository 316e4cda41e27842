//! The per-VM control API, served by each VMM process on its `--api-socket`.
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | GET | `/vm` | – | [`VmInfo`] |
//! | PUT | `/vm/pause` | – | [`VmInfo`] |
//! | PUT | `/vm/resume` | – | [`VmInfo`] |
//! | PUT | `/vm/shutdown` | [`ShutdownRequest`] | [`VmInfo`] |
//! | PUT | `/vm/reboot` | – | [`VmInfo`] |
//! | PUT | `/vm/snapshot` | [`SnapshotRequest`] | [`SnapshotInfo`] |
//! | GET | `/metrics` | – | Prometheus text |
//!
//! Errors answer 400 (malformed body), 404 (unknown path), 405 (wrong method), 409 (the
//! operation is not valid in the VM's current state) or 500, with an [`crate::ErrorBody`].
//! `docs/api/vm.yaml` is the OpenAPI description; tests check responses against it.

use serde::{Deserialize, Serialize};

/// The lifecycle state of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Built, vCPUs not started yet.
    Created,
    Running,
    Paused,
    /// A graceful shutdown was requested; the guest has not stopped yet.
    ShuttingDown,
    /// The VM ended; the process is about to exit.
    Shutdown,
}

impl VmState {
    pub const ALL: [VmState; 5] = [
        VmState::Created,
        VmState::Running,
        VmState::Paused,
        VmState::ShuttingDown,
        VmState::Shutdown,
    ];
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            VmState::Created => "created",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::ShuttingDown => "shutting_down",
            VmState::Shutdown => "shutdown",
        };
        f.write_str(s)
    }
}

/// The VM's shape as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfigInfo {
    pub cpus: u16,
    pub memory_mib: u64,
    pub kernel: String,
    pub initrd: Option<String>,
    pub cmdline: String,
}

/// Counters since the VMM process started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmCounters {
    pub uptime_ms: u64,
    /// vCPU exits handled in userspace (port I/O and MMIO).
    pub io_exits: u64,
    /// Milliseconds spent paused in total.
    pub paused_ms: u64,
}

/// The answer of `GET /vm` and of the lifecycle operations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmInfo {
    pub state: VmState,
    pub config: VmConfigInfo,
    pub counters: VmCounters,
    /// Set when the VM was restored from a snapshot: the snapshot's directory.
    pub restored_from: Option<String>,
    pub version: String,
}

/// Body of `PUT /vm/shutdown`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownRequest {
    /// How long the guest gets to stop by itself after Ctrl-Alt-Del before the VM is stopped
    /// forcibly; 0 stops at once. Default 10000.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// Body of `PUT /vm/snapshot`. The VM must be paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    /// Directory to write `state` and `memory` into (created if missing; must not already
    /// hold a snapshot).
    pub path: String,
}

/// The answer of `PUT /vm/snapshot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotInfo {
    pub path: String,
    pub state_bytes: u64,
    pub memory_bytes: u64,
    pub duration_ms: u64,
}
