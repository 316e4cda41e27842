//! Client for the per-VM control API (see [`api::vm`]).

use api::vm::{ShutdownRequest, SnapshotInfo, SnapshotRequest, VmInfo};

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
}
