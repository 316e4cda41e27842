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
//! | GET | `/vm/disks/{id}/limits` | – | [`IoLimit`] |
//! | PUT | `/vm/disks/{id}/limits` | [`IoLimit`] | [`IoLimit`] |
//! | GET | `/vm/disks/{id}/backend` | – | [`DiskBackend`] |
//! | PUT | `/vm/disks/{id}/backend` | [`DiskBackendRequest`] | [`DiskBackend`] |
//! | GET | `/vm/nets/{id}/limits` | – | [`NetLimits`] |
//! | PUT | `/vm/nets/{id}/limits` | [`NetLimits`] | [`NetLimits`] |
//! | GET | `/vm/balloon` | – | [`BalloonInfo`] |
//! | PUT | `/vm/balloon` | [`BalloonRequest`] | [`BalloonInfo`] |
//!
//! Errors answer 400 (malformed body), 404 (unknown path or device), 405 (wrong method), 409 (the
//! operation is not valid in the VM's current state) or 500, with an [`crate::ErrorBody`].
//! `docs/api/vm.json` is the OpenAPI description; tests check responses against it.

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

/// Token-bucket I/O limits of one device direction, changed at run time with `PUT` (the body
/// replaces every limit: a missing or null rate is unlimited, a missing burst is a tenth of a
/// second's worth). The answers carry the limits in effect, bursts filled in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoLimit {
    /// Bytes per second (above zero).
    #[serde(default)]
    pub bytes_per_sec: Option<u64>,
    /// Bytes that may be saved up for a burst (above zero; needs `bytes_per_sec`).
    #[serde(default)]
    pub bytes_burst: Option<u64>,
    /// Requests (disk) or frames (net) per second (above zero).
    #[serde(default)]
    pub ops_per_sec: Option<u64>,
    /// Operations that may be saved up for a burst (above zero; needs `ops_per_sec`).
    #[serde(default)]
    pub ops_burst: Option<u64>,
}

impl IoLimit {
    pub fn is_unlimited(&self) -> bool {
        self.bytes_per_sec.is_none() && self.ops_per_sec.is_none()
    }

    /// The first problem of a requested limit, as one line.
    pub fn check(&self) -> Result<(), String> {
        let pairs = [
            (
                "bytes_per_sec",
                self.bytes_per_sec,
                "bytes_burst",
                self.bytes_burst,
            ),
            ("ops_per_sec", self.ops_per_sec, "ops_burst", self.ops_burst),
        ];
        for (rate_name, rate, burst_name, burst) in pairs {
            if rate == Some(0) {
                return Err(format!(
                    "{rate_name} must be above zero (leave it out for no limit)"
                ));
            }
            if burst == Some(0) {
                return Err(format!("{burst_name} must be above zero"));
            }
            if burst.is_some() && rate.is_none() {
                return Err(format!("{burst_name} needs {rate_name}"));
            }
        }
        Ok(())
    }
}

/// The limits of one network card: `rx` host → guest, `tx` guest → host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetLimits {
    #[serde(default)]
    pub rx: IoLimit,
    #[serde(default)]
    pub tx: IoLimit,
}

/// The on-disk format of a disk image (always said, never guessed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

/// Body of `PUT /vm/disks/{id}/backend`: the image the disk continues on. The VM must be
/// paused, and the image's backing chain must contain the image the disk has open (a fresh
/// qcow2 overlay over it, typically), with the same virtual size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskBackendRequest {
    /// The new image file (absolute).
    pub path: String,
    pub format: DiskFormat,
}

/// The answer of `GET`/`PUT /vm/disks/{id}/backend`: the image a disk serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskBackend {
    /// The image file as it was opened.
    pub path: String,
    pub format: DiskFormat,
    pub read_only: bool,
    /// The disk's capacity as the guest sees it.
    pub size_bytes: u64,
}

/// Body of `PUT /vm/balloon`: how much memory the guest should hand back to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonRequest {
    /// The balloon's target size in MiB (0 gives everything back to the guest); at most the
    /// guest's memory size.
    pub target_mib: u64,
}

/// The answer of `GET`/`PUT /vm/balloon`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonInfo {
    /// The size the host asked for.
    pub target_mib: u64,
    /// The size the guest says it has reached.
    pub actual_mib: u64,
    /// Whether the guest's driver has started the device.
    pub active: bool,
    pub deflate_on_oom: bool,
    /// Seconds between statistics requests (null: no statistics).
    pub stats_period_secs: Option<u64>,
    pub free_page_reporting: bool,
    /// Bytes the guest handed over through the inflate queue (freed on the host), since start.
    pub inflated_bytes: u64,
    /// Bytes the guest took back through the deflate queue, since start.
    pub deflated_bytes: u64,
    /// Bytes of free memory the guest reported and the host freed, since start.
    pub reported_bytes: u64,
    /// The guest's latest statistics (null until it sent some).
    pub stats: Option<BalloonStats>,
}

/// The guest's memory statistics (virtio-balloon stats queue); memory in bytes, the rest
/// counts. A statistic the guest did not send is null.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStats {
    /// Milliseconds since the guest sent these.
    pub age_ms: u64,
    pub swap_in: Option<u64>,
    pub swap_out: Option<u64>,
    pub major_faults: Option<u64>,
    pub minor_faults: Option<u64>,
    pub free_memory: Option<u64>,
    pub total_memory: Option<u64>,
    pub available_memory: Option<u64>,
    pub disk_caches: Option<u64>,
    pub hugetlb_allocations: Option<u64>,
    pub hugetlb_failures: Option<u64>,
    pub oom_kills: Option<u64>,
    pub alloc_stalls: Option<u64>,
    pub async_scans: Option<u64>,
    pub direct_scans: Option<u64>,
    pub async_reclaims: Option<u64>,
    pub direct_reclaims: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_limit_checks_name_the_field() {
        let ok = IoLimit {
            bytes_per_sec: Some(10),
            bytes_burst: Some(5),
            ..IoLimit::default()
        };
        assert_eq!(ok.check(), Ok(()));
        assert_eq!(IoLimit::default().check(), Ok(()));
        let zero = IoLimit {
            ops_per_sec: Some(0),
            ..IoLimit::default()
        };
        assert!(zero.check().unwrap_err().contains("ops_per_sec"));
        let lonely = IoLimit {
            bytes_burst: Some(1),
            ..IoLimit::default()
        };
        assert_eq!(
            lonely.check(),
            Err("bytes_burst needs bytes_per_sec".into())
        );
    }

    #[test]
    fn net_limits_default_to_unlimited_and_reject_unknown_fields() {
        let l: NetLimits = serde_json::from_str(r#"{"tx":{"bytes_per_sec":1}}"#).unwrap();
        assert!(l.rx.is_unlimited());
        assert_eq!(l.tx.bytes_per_sec, Some(1));
        assert!(serde_json::from_str::<NetLimits>(r#"{"up":{}}"#).is_err());
        assert!(serde_json::from_str::<IoLimit>(r#"{"bw":1}"#).is_err());
    }
}
