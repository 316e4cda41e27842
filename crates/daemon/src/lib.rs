//! `daemon`: kapsel's host daemon. It owns every guest of the host:
//!
//! - [`db`]: state in SQLite (instances, images, networks, snapshots, events).
//! - [`server`] and [`routes`]: the REST/JSON API on a UNIX socket (`docs/api/daemon.yaml`).
//! - [`ops`]: instance operations; [`lifecycle`]: spawning and stopping VMM processes.
//! - [`supervisor`]: pidfd watching, restart policies, re-attaching after a daemon restart.
//! - [`cgroups`]: per-guest cgroups (v1 and v2) through the `sandbox` crate.
//! - [`network`], [`netsetup`]: bridges, dnsmasq and nftables NAT.
//! - [`images`]: the storage pool; [`metrics`]: the Prometheus endpoint; [`events`].
//! - [`container`]: containers as instances (a monitor process per container, exec,
//!   snapshots of the writable layer, veth networking).

pub mod balloon;
pub mod cgroups;
pub mod container;
pub mod db;
pub mod disks;
pub mod error;
pub mod events;
pub mod images;
pub mod iolimits;
pub mod lifecycle;
pub mod metrics;
pub mod names;
pub mod netsetup;
pub mod network;
pub mod ops;
pub mod process;
pub mod routes;
pub mod server;
pub mod snapshots;
pub mod state;
pub mod supervisor;
#[cfg(test)]
mod test_util;

use std::sync::Arc;

pub use error::DaemonError;
pub use state::{Daemon, DaemonConfig};

/// Opens the state, re-attaches to surviving guests, brings networks up, starts the
/// supervisor and serves the API until the process ends.
pub fn run(config: DaemonConfig) -> Result<(), DaemonError> {
    let listener = server::bind(&config.socket)?;
    let daemon = Arc::new(Daemon::new(config)?);
    network::restore(&daemon);
    supervisor::recover(&daemon)?;
    if let Err(e) = snapshots::recover(&daemon) {
        tracing::warn!(error = %e.line(), "half-taken snapshots not settled");
    }
    let sup = daemon.clone();
    std::thread::Builder::new()
        .name("supervisor".into())
        .spawn(move || supervisor::run(sup))
        .map_err(|e| DaemonError::io("spawn", "supervisor thread", e))?;
    tracing::info!(socket = %daemon.config.socket.display(), cgroup = daemon.cgroups.version(), "daemon ready");
    server::serve(daemon, listener);
    Ok(())
}
