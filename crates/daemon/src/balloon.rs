//! A VM's memory balloon target, pushed to its VMM (`PUT /vm/balloon`): live on
//! `config set NAME balloon=SIZE` when the VMM has a balloon, else from the next start (which
//! adds one with `--balloon`).

use std::time::{Duration, Instant};

use client::vm::VmClient;
use client::{ClientError, Endpoint};

use crate::error::{DaemonError, Result};
use crate::state::Daemon;

/// Sets the target; `Ok(false)` when the running VMM has no balloon (started before one was
/// configured). Retries connection failures for `patience` (a VMM just started).
pub fn set_target(d: &Daemon, name: &str, target_mib: u64, patience: Duration) -> Result<bool> {
    let vm = VmClient::new(
        Endpoint::new(d.config.api_socket(name)).with_timeout(Duration::from_secs(10)),
    );
    let deadline = Instant::now() + patience;
    loop {
        match vm.set_balloon(target_mib) {
            Ok(_) => return Ok(true),
            Err(ClientError::Status { status, .. }) if status == 404 || status == 409 => {
                return Ok(false)
            }
            Err(ClientError::Status { status, message }) if status < 500 => {
                return Err(DaemonError::BadRequest(format!(
                    "balloon target {target_mib} MiB: {message}"
                )))
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                return Err(DaemonError::Vmm(format!(
                    "balloon target through the VMM API failed: {e}"
                )))
            }
        }
    }
}
