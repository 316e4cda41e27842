//! The host side of a managed network: a Linux bridge with the gateway address, dnsmasq for
//! DHCP and DNS on it, and an nftables table that masquerades the subnet's traffic leaving
//! through any other interface. All names start with `kapsel`; nothing else is touched.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use api::daemon::Network;

use crate::error::{DaemonError, Result};

/// An IPv4 gateway address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub gateway: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    /// Parses `A.B.C.D/N` with N in 8..=29.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || {
            DaemonError::BadRequest(format!(
                "invalid address {s:?}: expected the bridge's IPv4 address with a prefix of 8 to 29, e.g. 10.77.0.1/24"
            ))
        };
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let gateway: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if !(8..=29).contains(&prefix) {
            return Err(bad());
        }
        let sn = Subnet { gateway, prefix };
        let host = u32::from(gateway) & !sn.mask();
        if host == 0 || host == !sn.mask() {
            return Err(bad());
        }
        Ok(sn)
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.gateway) & self.mask())
    }

    /// The DHCP pool: from the address after the gateway's /x network start + 10 to the
    /// last usable address.
    pub fn dhcp_range(&self) -> (Ipv4Addr, Ipv4Addr) {
        let net = u32::from(self.network());
        let last = net | !self.mask();
        let size = !self.mask();
        let start = net + if size > 20 { 10 } else { 2 };
        (Ipv4Addr::from(start), Ipv4Addr::from(last - 1))
    }

    pub fn overlaps(&self, other: &Subnet) -> bool {
        let p = self.prefix.min(other.prefix);
        let m = u32::MAX << (32 - p);
        u32::from(self.gateway) & m == u32::from(other.gateway) & m
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.gateway, self.prefix)
    }
}

pub(crate) fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| DaemonError::Network(format!("cannot run {program}: {e}")))?;
    if !out.status.success() {
        return Err(DaemonError::Network(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn net_dir(state: &Path, name: &str) -> PathBuf {
    state.join("networks").join(name)
}

/// dnsmasq's `--dhcp-hostsdir` (`hosts` in the network's directory, as in [`start_dnsmasq`]):
/// one `MAC,NAME` file per instance on the network.
fn hosts_dir(state: &Path, name: &str) -> PathBuf {
    net_dir(state, name).join("hosts")
}

/// dnsmasq's `--hostsdir` (`names` in the network's directory): one hosts-format file per
/// container on the network (`ADDRESS NAME NAME.kapsel`), for instances whose address the
/// daemon assigns rather than dnsmasq's DHCP.
fn names_dir(state: &Path, name: &str) -> PathBuf {
    net_dir(state, name).join("names")
}

fn table(name: &str) -> String {
    format!("kapsel_{name}").replace('-', "_")
}

/// True when the link exists in this process's network namespace (asked through `ip`, not
/// sysfs, which shows the namespace that mounted it).
pub fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["-o", "link", "show", "dev", name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True when the bridge exists.
pub fn is_active(bridge: &str) -> bool {
    link_exists(bridge)
}

/// The nftables ruleset for a network: masquerade and forward for its subnet.
pub fn nft_rules(net: &Network, subnet: &Subnet) -> String {
    let t = table(&net.name);
    let cidr = format!("{}/{}", subnet.network(), subnet.prefix);
    let br = &net.bridge;
    let mut rules = format!(
        "table ip {t} {{\n\
         \tchain forward {{\n\t\ttype filter hook forward priority 0; policy accept;\n\
         \t\tiifname \"{br}\" accept\n\
         \t\toifname \"{br}\" ct state established,related accept\n\t}}\n"
    );
    if net.nat {
        rules.push_str(&format!(
            "\tchain postrouting {{\n\t\ttype nat hook postrouting priority 100; policy accept;\n\
             \t\tip saddr {cidr} ip daddr != {cidr} masquerade\n\t}}\n"
        ));
    }
    rules.push_str("}\n");
    rules
}

/// Creates the bridge, starts dnsmasq and loads the NAT rules (idempotent).
pub fn activate(state: &Path, net: &Network) -> Result<()> {
    let subnet = Subnet::parse(&net.address)?;
    let br = net.bridge.as_str();
    if !link_exists(br) {
        run("ip", &["link", "add", br, "type", "bridge"])?;
    }
    // A bridge without an address of its own takes the lowest of its ports' and changes it
    // when that port goes: guests' ARP entries for the gateway (and DNS server) would then
    // point nowhere until they expire (seen: seconds without DNS after deleting a container).
    run(
        "ip",
        &["link", "set", br, "address", &bridge_mac(&net.name)],
    )?;
    let addr = subnet.to_string();
    let _ = Command::new("ip")
        .args(["addr", "add", &addr, "dev", br])
        .output();
    run("ip", &["link", "set", br, "up"])?;
    let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");

    let t = table(&net.name);
    let _ = Command::new("nft")
        .args(["delete", "table", "ip", &t])
        .output();
    let dir = net_dir(state, &net.name);
    std::fs::create_dir_all(&dir).map_err(|e| DaemonError::io("create", &dir, e))?;
    let rules_path = dir.join("rules.nft");
    std::fs::write(&rules_path, nft_rules(net, &subnet))
        .map_err(|e| DaemonError::io("write", &rules_path, e))?;
    run("nft", &["-f", &rules_path.display().to_string()])?;
    start_dnsmasq(&dir, net, &subnet)
}

fn dnsmasq_pid(dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join("dnsmasq.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.trim() == "dnsmasq" && crate::process::start_time(pid).is_some()).then_some(pid)
}

/// Restarts the network's dnsmasq if it died (called by the supervisor).
pub fn ensure_dnsmasq(state: &Path, net: &Network) -> Result<()> {
    let dir = net_dir(state, &net.name);
    if dnsmasq_pid(&dir).is_some() || !link_exists(&net.bridge) {
        return Ok(());
    }
    tracing::warn!(network = %net.name, "dnsmasq is gone; starting it again");
    start_dnsmasq(&dir, net, &Subnet::parse(&net.address)?)
}

fn start_dnsmasq(dir: &Path, net: &Network, subnet: &Subnet) -> Result<()> {
    if dnsmasq_pid(dir).is_some() {
        return Ok(());
    }
    let (lo, hi) = subnet.dhcp_range();
    let hosts = dir.join("hosts");
    std::fs::create_dir_all(&hosts).map_err(|e| DaemonError::io("create", &hosts, e))?;
    let names = dir.join("names");
    std::fs::create_dir_all(&names).map_err(|e| DaemonError::io("create", &names, e))?;
    let args = [
        "--conf-file=/dev/null".to_string(),
        "--strict-order".into(),
        "--bind-interfaces".into(),
        "--except-interface=lo".into(),
        format!("--interface={}", net.bridge),
        format!("--listen-address={}", subnet.gateway),
        format!("--dhcp-range={lo},{hi},1h"),
        "--dhcp-no-override".into(),
        "--dhcp-authoritative".into(),
        format!("--dhcp-leasefile={}", dir.join("leases").display()),
        format!("--dhcp-hostsdir={}", hosts.display()),
        format!("--hostsdir={}", names.display()),
        format!("--pid-file={}", dir.join("dnsmasq.pid").display()),
        "--domain=kapsel".into(),
        "--local=/kapsel/".into(),
        "--expand-hosts".into(),
    ];
    let out = Command::new("dnsmasq")
        .args(&args)
        .output()
        .map_err(|e| DaemonError::Network(format!("cannot run dnsmasq: {e}")))?;
    if !out.status.success() {
        return Err(DaemonError::Network(format!(
            "dnsmasq failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// A counter of a network interface (`rx_bytes`, `tx_packets`, …), 0 when unreadable.
pub fn iface_stat(iface: &str, stat: &str) -> u64 {
    // /proc/self/net/dev shows this process's network namespace (sysfs shows the one that
    // mounted it, so a daemon in its own namespace would read zeros there).
    std::fs::read_to_string("/proc/self/net/dev")
        .ok()
        .and_then(|text| net_dev_stat(&text, iface, stat))
        .unwrap_or(0)
}

/// One counter (`rx_bytes`, `tx_packets`, …) of `iface` from `/proc/net/dev` text.
fn net_dev_stat(text: &str, iface: &str, stat: &str) -> Option<u64> {
    let column = match stat {
        "rx_bytes" => 0,
        "rx_packets" => 1,
        "tx_bytes" => 8,
        "tx_packets" => 9,
        _ => return None,
    };
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim() == iface)
        .and_then(|(_, values)| values.split_whitespace().nth(column)?.parse().ok())
}

/// Gives the NIC with `mac` the host name `instance` in the network's DHCP and DNS (so guests
/// find each other by instance name, `NAME` or `NAME.kapsel`, whatever hostname they send).
pub fn register_host(state: &Path, network: &str, instance: &str, mac: &str) -> Result<()> {
    write_entry(
        &hosts_dir(state, network),
        instance,
        &format!("{mac},{instance}\n"),
    )
}

/// Names the fixed address `ip` `instance` (and `instance.kapsel`) in the network's DNS: a
/// container's address comes from the daemon, not from a DHCP lease, so dnsmasq learns it
/// from a hosts file.
pub fn register_name(state: &Path, network: &str, instance: &str, ip: Ipv4Addr) -> Result<()> {
    write_entry(
        &names_dir(state, network),
        instance,
        &format!("{ip} {instance} {instance}.kapsel\n"),
    )
}

/// Writes `line` as the file `instance` of one of dnsmasq's watched directories, unless it
/// is already there. dnsmasq reads a new file by itself (inotify); the file is written under
/// a dot name (which dnsmasq ignores), synced and renamed into place.
fn write_entry(dir: &Path, instance: &str, line: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| DaemonError::io("create", dir, e))?;
    let path = dir.join(instance);
    if std::fs::read_to_string(&path).is_ok_and(|old| old == line) {
        return Ok(());
    }
    let tmp = dir.join(format!(".{instance}.tmp"));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, line.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    written.map_err(|e| DaemonError::io("write", &path, e))
}

/// Forgets `instance`'s host name and address record on `network` (instance deleted).
/// dnsmasq keeps records of deleted files until it rereads its files, so it gets a SIGHUP.
pub fn unregister_host(state: &Path, network: &str, instance: &str) {
    let mut removed = false;
    for dir in [hosts_dir(state, network), names_dir(state, network)] {
        removed |= std::fs::remove_file(dir.join(instance)).is_ok();
    }
    if removed {
        if let Some(pid) = dnsmasq_pid(&net_dir(state, network)) {
            let _ = crate::process::kill(pid, libc::SIGHUP);
        }
    }
}

/// The TAP of NIC `index` of instance `instance`: `kapsel` + 8 hex digits of a hash + the
/// index (15 bytes at most, the kernel's limit), stable across restarts.
pub fn tap_name(instance: &str, index: usize) -> String {
    format!("kapsel{:08x}{}", fnv(instance) as u32, index % 10)
}

/// A locally administered MAC for NIC `index` of `instance`, stable across restarts.
pub fn mac(instance: &str, index: usize) -> String {
    let h = fnv(&format!("{instance}/{index}"));
    format!(
        "52:54:00:{:02x}:{:02x}:{:02x}",
        (h >> 16) as u8,
        (h >> 8) as u8,
        h as u8
    )
}

/// The fixed MAC of network `name`'s bridge (locally administered, stable across restarts).
pub fn bridge_mac(name: &str) -> String {
    mac(&format!("bridge:{name}"), 0)
}

pub(crate) fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Creates a persistent TAP (with virtio-net headers) on `bridge`, if it is not there yet.
pub fn ensure_tap(tap: &str, bridge: &str) -> Result<()> {
    if !link_exists(tap) {
        run(
            "ip",
            &["tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"],
        )?;
    }
    run("ip", &["link", "set", tap, "master", bridge])?;
    run("ip", &["link", "set", tap, "up"])
}

/// Deletes a TAP (instance deleted).
pub fn remove_tap(tap: &str) {
    let _ = Command::new("ip")
        .args(["tuntap", "del", "dev", tap, "mode", "tap"])
        .output();
}

/// Stops dnsmasq, drops the NAT table and deletes the bridge.
pub fn deactivate(state: &Path, net: &Network) {
    let dir = net_dir(state, &net.name);
    if let Some(pid) = dnsmasq_pid(&dir) {
        let _ = crate::process::kill(pid, libc::SIGTERM);
    }
    let _ = Command::new("nft")
        .args(["delete", "table", "ip", &table(&net.name)])
        .output();
    let _ = Command::new("ip")
        .args(["link", "del", &net.bridge])
        .output();
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_from_proc_net_dev() {
        let text = "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes packets\n  kapselc1: 100 2 0 0 0 0 0 0 300 4 0 0 0 0 0 0\n";
        assert_eq!(net_dev_stat(text, "kapselc1", "rx_bytes"), Some(100));
        assert_eq!(net_dev_stat(text, "kapselc1", "tx_packets"), Some(4));
        assert_eq!(net_dev_stat(text, "other", "rx_bytes"), None);
        assert_eq!(net_dev_stat(text, "kapselc1", "rx_errs"), None);
    }

    #[test]
    fn subnets() {
        let s = Subnet::parse("10.77.0.1/24").unwrap();
        assert_eq!(s.network(), Ipv4Addr::new(10, 77, 0, 0));
        assert_eq!(
            s.dhcp_range(),
            (Ipv4Addr::new(10, 77, 0, 10), Ipv4Addr::new(10, 77, 0, 254))
        );
        for bad in [
            "10.77.0.0/24",
            "10.77.0.255/24",
            "10.0.0.1",
            "x/24",
            "10.0.0.1/31",
            "10.0.0.1/4",
        ] {
            assert!(Subnet::parse(bad).is_err(), "{bad}");
        }
        assert!(s.overlaps(&Subnet::parse("10.77.0.9/16").unwrap()));
        assert!(!s.overlaps(&Subnet::parse("10.78.0.1/24").unwrap()));
    }

    #[test]
    fn tap_names_fit_and_macs_are_local() {
        let t = tap_name(&"x".repeat(40), 3);
        assert!(
            t.len() <= 15 && t.starts_with("kapsel") && t.ends_with('3'),
            "{t}"
        );
        assert_eq!(tap_name("a", 0), tap_name("a", 0));
        assert_ne!(tap_name("a", 0), tap_name("b", 0));
        assert!(mac("a", 0).starts_with("52:54:00:"));
        assert_eq!(bridge_mac("lan"), bridge_mac("lan"));
        assert_ne!(bridge_mac("lan"), mac("lan", 0));
        assert_ne!(mac("a", 0), mac("a", 1));
    }

    #[test]
    fn names_are_hosts_files_written_whole_and_removed() {
        let state = tempfile::tempdir().unwrap();
        let ip = Ipv4Addr::new(10, 77, 0, 254);
        register_name(state.path(), "lan", "web", ip).unwrap();
        register_name(state.path(), "lan", "web", ip).unwrap();
        let dir = names_dir(state.path(), "lan");
        assert_eq!(
            std::fs::read_to_string(dir.join("web")).unwrap(),
            "10.77.0.254 web web.kapsel\n"
        );
        // nothing but the record itself (no temporary file dnsmasq could read)
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        register_host(state.path(), "lan", "web", "52:54:00:00:00:01").unwrap();
        unregister_host(state.path(), "lan", "web");
        assert!(!dir.join("web").exists());
        assert!(!hosts_dir(state.path(), "lan").join("web").exists());
    }

    #[test]
    fn rules_name_only_kapsel_objects() {
        let net = Network {
            name: "lan-1".into(),
            bridge: "kapsel-lan-1".into(),
            address: "10.77.0.1/24".into(),
            nat: true,
            active: false,
        };
        let r = nft_rules(&net, &Subnet::parse(&net.address).unwrap());
        assert!(r.starts_with("table ip kapsel_lan_1 {"));
        assert!(r.contains("ip saddr 10.77.0.0/24 ip daddr != 10.77.0.0/24 masquerade"));
    }
}
