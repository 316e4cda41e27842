//! Client for the per-VM control API (see [`api::vm`]).

use api::vm::{
    BalloonInfo, BalloonRequest, DiskBackend, DiskBackendRequest, IoLimit, NetLimits,
    ShutdownRequest, SnapshotInfo, SnapshotRequest, VmInfo,
};

use crate::{ClientError, Endpoint};

/// A VMM process's API socket.
#[derive(Debug, Clone)]
pub struct VmClient {
    endpoint: Endpoint,
}

impl VmClient {
    pub fn new(endpoint: Endpoint) -> Self {
        VmClient { endpoint }
    }

    pub fn info(&self) -> Result<VmInfo, ClientError> {
        self.endpoint.request::<(), _>("GET", "/vm", None)
    }

    pub fn pause(&self) -> Result<VmInfo, ClientError> {
        self.endpoint.request::<(), _>("PUT", "/vm/pause", None)
    }

    pub fn resume(&self) -> Result<VmInfo, ClientError> {
        self.endpoint.request::<(), _>("PUT", "/vm/resume", None)
    }

    pub fn shutdown(&self, timeout_ms: Option<u64>) -> Result<VmInfo, ClientError> {
        self.endpoint
            .request("PUT", "/vm/shutdown", Some(&ShutdownRequest { timeout_ms }))
    }

    pub fn reboot(&self) -> Result<VmInfo, ClientError> {
        self.endpoint.request::<(), _>("PUT", "/vm/reboot", None)
    }

    pub fn snapshot(&self, path: &str) -> Result<SnapshotInfo, ClientError> {
        self.endpoint.request(
            "PUT",
            "/vm/snapshot",
            Some(&SnapshotRequest {
                path: path.to_string(),
            }),
        )
    }

    /// The Prometheus text exposition of the VM's counters.
    pub fn metrics(&self) -> Result<String, ClientError> {
        let resp = self.endpoint.request_raw("GET", "/metrics", &[])?;
        Ok(String::from_utf8_lossy(&resp.body).into_owned())
    }

    /// The I/O limits of disk `id` in effect.
    pub fn disk_limits(&self, id: &str) -> Result<IoLimit, ClientError> {
        self.endpoint
            .request::<(), _>("GET", &format!("/vm/disks/{id}/limits"), None)
    }

    /// Replaces the I/O limits of disk `id` at run time; returns the limits now in effect.
    pub fn set_disk_limits(&self, id: &str, limit: &IoLimit) -> Result<IoLimit, ClientError> {
        self.endpoint
            .request("PUT", &format!("/vm/disks/{id}/limits"), Some(limit))
    }

    /// The image disk `id` serves.
    pub fn disk_backend(&self, id: &str) -> Result<DiskBackend, ClientError> {
        self.endpoint
            .request::<(), _>("GET", &format!("/vm/disks/{id}/backend"), None)
    }

    /// Makes disk `id` of the paused VM continue on another image (an overlay over the one
    /// it has open); returns the image it serves now.
    pub fn set_disk_backend(
        &self,
        id: &str,
        req: &DiskBackendRequest,
    ) -> Result<DiskBackend, ClientError> {
        self.endpoint
            .request("PUT", &format!("/vm/disks/{id}/backend"), Some(req))
    }

    /// The I/O limits of network card `id` (`net0`, …) in effect.
    pub fn net_limits(&self, id: &str) -> Result<NetLimits, ClientError> {
        self.endpoint
            .request::<(), _>("GET", &format!("/vm/nets/{id}/limits"), None)
    }

    /// Replaces the I/O limits of network card `id` at run time; returns the limits now in
    /// effect.
    pub fn set_net_limits(&self, id: &str, limits: &NetLimits) -> Result<NetLimits, ClientError> {
        self.endpoint
            .request("PUT", &format!("/vm/nets/{id}/limits"), Some(limits))
    }

    /// The memory balloon: target, size and the guest's latest statistics.
    pub fn balloon(&self) -> Result<BalloonInfo, ClientError> {
        self.endpoint.request::<(), _>("GET", "/vm/balloon", None)
    }

    /// Asks the guest to hand `target_mib` MiB to the balloon (0: take everything back);
    /// returns the balloon's state right after (the guest gets there over time).
    pub fn set_balloon(&self, target_mib: u64) -> Result<BalloonInfo, ClientError> {
        self.endpoint
            .request("PUT", "/vm/balloon", Some(&BalloonRequest { target_mib }))
    }
}
