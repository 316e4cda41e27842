//! A container's network interface: a veth pair whose host end joins a managed network's
//! bridge (the same bridge VMs' TAPs are on, so containers and VMs reach each other) and
//! whose other end becomes `eth0` in the container's network namespace, with an address the
//! daemon assigns and a default route through the bridge.
//!
//! Addresses are taken from the top of the network's DHCP pool downwards, skipping those
//! held by other containers. dnsmasq checks an address with a ping before it leases it, so a
//! VM does not get an address a running container holds.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;

use api::daemon::Network;

use crate::container::spec::NetSpec;
use crate::error::{DaemonError, Result};
use crate::netsetup::{self, Subnet};
use crate::state::Daemon;

/// The host end of a container's veth: `kapselc` + 8 hex digits (15 bytes, the limit).
pub fn host_if(name: &str) -> String {
    format!("kapselc{:08x}", netsetup::fnv(name) as u32)
}

/// The container end before it moves into the container and becomes `eth0`.
fn peer_if(name: &str) -> String {
    format!("kapselp{:08x}", netsetup::fnv(name) as u32)
}

/// The highest pool address of `subnet` not in `taken`.
pub fn pick_address(subnet: &Subnet, taken: &[Ipv4Addr]) -> Option<Ipv4Addr> {
    let (lo, hi) = subnet.dhcp_range();
    (u32::from(lo)..=u32::from(hi))
        .rev()
        .map(Ipv4Addr::from)
        .find(|a| !taken.contains(a))
}

/// `network` and its subnet; a network that does not exist is a bad request.
fn find_network(d: &Daemon, network: &str) -> Result<(Network, Subnet)> {
    let net = d
        .db()
        .networks()?
        .into_iter()
        .find(|n| n.name == network)
        .ok_or_else(|| DaemonError::BadRequest(format!("network '{network}' does not exist")))?;
    let subnet = Subnet::parse(&net.address)?;
    Ok((net, subnet))
}

/// Assigns an address on `network` for a new container (`A.B.C.D/N`).
pub fn allocate(d: &Daemon, network: &str) -> Result<String> {
    let (_, subnet) = find_network(d, network)?;
    let taken: Vec<Ipv4Addr> = d
        .db()
        .instances()?
        .iter()
        .filter(|(i, _)| i.config.networks.first().map(String::as_str) == Some(network))
        .filter_map(|(i, _)| i.address.as_deref()?.split('/').next()?.parse().ok())
        .collect();
    let addr = pick_address(&subnet, &taken).ok_or_else(|| {
        DaemonError::Conflict(format!("network '{network}' has no free address left"))
    })?;
    Ok(format!("{addr}/{}", subnet.prefix))
}

/// What the monitor of container `name` needs to wire it to `network`. Also names the
/// container in the network's DNS (`NAME`, `NAME.kapsel`; the record stays while the
/// container exists, as its address does) and writes the `resolv.conf` the container gets,
/// pointing at the bridge's dnsmasq.
pub fn spec(d: &Daemon, name: &str, network: &str, address: &str) -> Result<NetSpec> {
    let (net, subnet) = find_network(d, network)?;
    let ip: Ipv4Addr = address
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| {
            DaemonError::Corrupt(format!("container '{name}' has address {address:?}"))
        })?;
    netsetup::register_name(&d.config.state_dir, network, name, ip)?;
    let resolv_conf = d.config.instance_run_dir(name).join("resolv.conf");
    write_resolv_conf(&resolv_conf, subnet.gateway)?;
    Ok(NetSpec {
        bridge: net.bridge,
        host_if: host_if(name),
        mac: netsetup::mac(name, 0),
        address: address.to_string(),
        gateway: subnet.gateway.to_string(),
        resolv_conf: Some(resolv_conf),
    })
}

/// The container's `/etc/resolv.conf` (bind-mounted read-only over the image's): the
/// bridge's dnsmasq, and `kapsel` as the search domain. Written atomically.
fn resolv_conf_text(gateway: Ipv4Addr) -> String {
    format!("nameserver {gateway}\nsearch kapsel\n")
}

fn write_resolv_conf(path: &Path, gateway: Ipv4Addr) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(|e| DaemonError::io("create", dir, e))?;
    let tmp = path.with_extension("conf.tmp");
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(resolv_conf_text(gateway).as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    written.map_err(|e| DaemonError::io("write", path, e))
}

/// Creates the veth pair and configures the container's end inside the network namespace
/// of `pid` (with the host's `ip`, entered through `nsenter`).
pub fn attach(spec: &NetSpec, name: &str, pid: i32) -> Result<()> {
    let host = spec.host_if.as_str();
    let peer = peer_if(name);
    detach(host);
    let _ = std::process::Command::new("ip")
        .args(["link", "del", &peer])
        .output();
    netsetup::run(
        "ip",
        &[
            "link", "add", host, "type", "veth", "peer", "name", &peer, "address", &spec.mac,
        ],
    )?;
    let pid_s = pid.to_string();
    let inside = |args: &[&str]| -> Result<()> {
        let mut full = vec!["-t", pid_s.as_str(), "-n", "ip"];
        full.extend_from_slice(args);
        netsetup::run("nsenter", &full)
    };
    let wired = (|| -> Result<()> {
        netsetup::run("ip", &["link", "set", host, "master", &spec.bridge])?;
        netsetup::run("ip", &["link", "set", host, "up"])?;
        netsetup::run("ip", &["link", "set", &peer, "netns", &pid_s])?;
        inside(&["link", "set", &peer, "name", "eth0"])?;
        inside(&["addr", "add", &spec.address, "dev", "eth0"])?;
        inside(&["link", "set", "eth0", "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        inside(&["route", "add", "default", "via", &spec.gateway])
    })();
    if wired.is_err() {
        detach(host);
    }
    wired
}

/// Deletes the host end (and with it the pair); a missing link is fine.
pub fn detach(host_if: &str) {
    if netsetup::link_exists(host_if) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", host_if])
            .output();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_limit_and_addresses_come_from_the_top() {
        assert_eq!(host_if("web").len(), 15);
        assert_ne!(host_if("web"), peer_if("web"));
        let s = Subnet::parse("10.77.0.1/24").unwrap();
        let top: Ipv4Addr = "10.77.0.254".parse().unwrap();
        assert_eq!(pick_address(&s, &[]), Some(top));
        assert_eq!(
            pick_address(&s, &[top]),
            Some("10.77.0.253".parse().unwrap())
        );
    }

    #[test]
    fn resolv_conf_names_the_bridge() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("run/resolv.conf");
        write_resolv_conf(&p, "10.77.0.1".parse().unwrap()).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "nameserver 10.77.0.1\nsearch kapsel\n"
        );
    }
}
