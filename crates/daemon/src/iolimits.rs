//! A VM's disk and network-card I/O limits, pushed to its VMM through the per-VM API
//! (`PUT /vm/disks/disk0/limits`, `/vm/nets/netN/limits`): live on `config set` and again
//! after every start, so the stored configuration is what runs.

use std::time::Duration;

use api::daemon::{Instance, InstanceConfig};
use api::vm::{IoLimit, NetLimits};
use client::vm::VmClient;
use client::{ClientError, Endpoint};

use crate::error::{DaemonError, Result};
use crate::state::Daemon;

/// Checks requested limits (rates and bursts above zero, a burst needs its rate).
pub fn check(inst: &Instance, c: &InstanceConfig) -> Result<()> {
    if let Some(l) = &c.disk_limits {
        if inst.disk.is_none() && !l.is_unlimited() {
            return Err(DaemonError::BadRequest(format!(
                "instance '{}' has no disk to limit",
                inst.name
            )));
        }
        l.check()
            .map_err(|e| DaemonError::BadRequest(format!("disk_limits: {e}")))?;
    }
    if let Some(n) = &c.net_limits {
        for (dir, l) in [("rx", &n.rx), ("tx", &n.tx)] {
            l.check()
                .map_err(|e| DaemonError::BadRequest(format!("net_limits.{dir}: {e}")))?;
        }
    }
    Ok(())
}

/// `None` when a limit clears everything (stored as no limit).
pub fn normalize(c: &mut InstanceConfig) {
    if c.disk_limits.is_some_and(|l| l.is_unlimited()) {
        c.disk_limits = None;
    }
    if c.net_limits
        .is_some_and(|n| n.rx.is_unlimited() && n.tx.is_unlimited())
    {
        c.net_limits = None;
    }
}

fn vmm_error(what: &str, e: ClientError) -> DaemonError {
    match e {
        ClientError::Status { status, message } if status < 500 => {
            DaemonError::Conflict(format!("VMM refused {what}: {message}"))
        }
        e => DaemonError::Vmm(format!("{what} through the VMM API failed: {e}")),
    }
}

/// [`apply`] right after a start: the VMM's API socket may still be coming up.
pub fn apply_at_start(d: &Daemon, inst: &Instance) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match apply(d, inst, &inst.config) {
            Err(DaemonError::Vmm(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// Sends the limits of `c` to the running VMM of `inst` (unset ones as unlimited).
pub fn apply(d: &Daemon, inst: &Instance, c: &InstanceConfig) -> Result<()> {
    let vm = VmClient::new(
        Endpoint::new(d.config.api_socket(&inst.name)).with_timeout(Duration::from_secs(10)),
    );
    if inst.disk.is_some() {
        let l = c.disk_limits.unwrap_or_default();
        vm.set_disk_limits("disk0", &l)
            .map_err(|e| vmm_error("disk limits", e))?;
    }
    let n: NetLimits = c.net_limits.unwrap_or_default();
    for i in 0..c.networks.len() {
        vm.set_net_limits(&format!("net{i}"), &n)
            .map_err(|e| vmm_error("network limits", e))?;
    }
    Ok(())
}

/// Whether `c` asks for any limit (so a start needs to push them).
pub fn any(c: &InstanceConfig) -> bool {
    c.disk_limits.is_some_and(|l: IoLimit| !l.is_unlimited())
        || c.net_limits
            .is_some_and(|n| !n.rx.is_unlimited() || !n.tx.is_unlimited())
}
