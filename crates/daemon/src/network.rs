//! Managed networks: stored in the database; the bridge, dnsmasq and NAT live in
//! [`crate::netsetup`].

use std::fmt::Write;

use api::daemon::{CreateNetwork, Network};

use crate::error::{DaemonError, Result};
use crate::names::{check_name, MAX_NETWORK_NAME};
use crate::netsetup;
use crate::state::Daemon;

/// The bridge device of network `name`.
pub fn bridge_name(name: &str) -> String {
    format!("kapsel-{name}")
}

pub fn list(d: &Daemon) -> Result<Vec<Network>> {
    let mut nets = d.db().networks()?;
    for n in &mut nets {
        n.active = netsetup::is_active(&n.bridge);
    }
    Ok(nets)
}

pub fn create(d: &Daemon, req: &CreateNetwork) -> Result<Network> {
    check_name("network", &req.name, MAX_NETWORK_NAME)?;
    let subnet = netsetup::Subnet::parse(&req.address)?;
    let net = Network {
        name: req.name.clone(),
        bridge: bridge_name(&req.name),
        address: subnet.to_string(),
        nat: req.nat,
        active: false,
    };
    for other in d.db().networks()? {
        if let Ok(o) = netsetup::Subnet::parse(&other.address) {
            if o.overlaps(&subnet) && other.name != net.name {
                return Err(DaemonError::Conflict(format!(
                    "{} overlaps network '{}' ({})",
                    net.address, other.name, other.address
                )));
            }
        }
    }
    d.db().insert_network(&net)?;
    if let Err(e) = netsetup::activate(&d.config.state_dir, &net) {
        netsetup::deactivate(&d.config.state_dir, &net);
        let _ = d.db().delete_network(&net.name);
        return Err(e);
    }
    d.event("network-created", None, &net.name);
    Ok(Network {
        active: true,
        ..net
    })
}

pub fn delete(d: &Daemon, name: &str) -> Result<()> {
    let nets = d.db().networks()?;
    let net = nets
        .into_iter()
        .find(|n| n.name == name)
        .ok_or_else(|| DaemonError::not_found("network", name))?;
    let users: Vec<String> = d
        .db()
        .instances()?
        .into_iter()
        .filter(|(i, _)| i.config.networks.iter().any(|n| n == name))
        .map(|(i, _)| i.name)
        .collect();
    if !users.is_empty() {
        return Err(DaemonError::Conflict(format!(
            "network '{name}' is used by {}",
            users.join(", ")
        )));
    }
    netsetup::deactivate(&d.config.state_dir, &net);
    d.db().delete_network(name)?;
    d.event("network-deleted", None, name);
    Ok(())
}

/// Brings every stored network up (daemon start).
pub fn restore(d: &Daemon) {
    let Ok(nets) = d.db().networks() else {
        return;
    };
    for net in nets {
        if let Err(e) = netsetup::activate(&d.config.state_dir, &net) {
            tracing::warn!(network = %net.name, error = %e.line(), "cannot bring network up");
        }
    }
}

/// Brings back any network's dnsmasq that died.
pub fn supervise(d: &Daemon) {
    let Ok(nets) = d.db().networks() else {
        return;
    };
    for net in nets {
        if let Err(e) = netsetup::ensure_dnsmasq(&d.config.state_dir, &net) {
            tracing::warn!(network = %net.name, error = %e.line(), "cannot restart dnsmasq");
        }
    }
}

/// Per-bridge traffic counters.
pub fn render_metrics(d: &Daemon, out: &mut String) {
    let Ok(nets) = d.db().networks() else {
        return;
    };
    let _ = writeln!(
        out,
        "# HELP kapsel_network_bytes_total Bytes through a managed bridge.\n# TYPE kapsel_network_bytes_total counter"
    );
    for net in nets {
        for dir in ["rx", "tx"] {
            let v = netsetup::iface_stat(&net.bridge, &format!("{dir}_bytes"));
            let _ = writeln!(
                out,
                "kapsel_network_bytes_total{{network=\"{}\",direction=\"{dir}\"}} {v}",
                net.name
            );
        }
    }
}
