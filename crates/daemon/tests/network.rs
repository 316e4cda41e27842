//! Managed networks, tested with the daemon inside its own network namespace (nothing on the
//! host changes): the bridge gets its address, dnsmasq hands out DHCP leases and DNS names
//! (a VM's NIC is named after its instance),
//! NAT rules are loaded, and two "guests" (veth pairs into their own namespaces, standing in
//! for VM TAPs) reach the host side and each other. Deleting the network removes it all.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use api::daemon::CreateNetwork;
use common::TestDaemon;

fn sh(cmd: &str) -> (bool, String) {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn must(cmd: &str) -> String {
    let (ok, text) = sh(cmd);
    assert!(ok, "{cmd}: {text}");
    text
}

fn tools_present() -> bool {
    ["dnsmasq", "nft", "ip", "unshare", "nsenter", "busybox"]
        .iter()
        .all(|t| sh(&format!("command -v {t}")).0)
}

/// A named namespace for one fake guest, removed on drop.
struct GuestNs(String);

impl Drop for GuestNs {
    fn drop(&mut self) {
        let _ = sh(&format!("ip netns del {}", self.0));
    }
}

#[test]
fn bridge_dhcp_dns_nat_and_guest_to_guest() {
    // never a silent skip: scripts/setup-host.sh installs the tools, tests run as root
    assert!(
        tools_present() && is_root(),
        "needs dnsmasq, nft, ip, unshare, nsenter, busybox and root (scripts/setup-host.sh)"
    );
    let d = TestDaemon::start_with(vec!["unshare".into(), "-n".into()]);
    let ns = format!("nsenter -t {} -n", d.daemon_pid());
    let net = d
        .client()
        .create_network(&CreateNetwork {
            name: "t1".into(),
            address: "10.77.0.1/24".into(),
            nat: true,
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    assert_eq!(net.bridge, "kapsel-t1");
    assert!(net.active);
    let addr = must(&format!("{ns} ip -4 addr show kapsel-t1"));
    assert!(addr.contains("10.77.0.1/24"), "{addr}");
    let rules = must(&format!("{ns} nft list table ip kapsel_t1"));
    assert!(rules.contains("masquerade"), "{rules}");
    // The host's own namespace has none of it.
    assert!(!Path::new("/sys/class/net/kapsel-t1").exists());

    // Two fake guests on the bridge, configured by DHCP.
    let script = d.dir.path().join("udhcpc.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n[ \"$1\" = bound ] && ip addr add \"$ip/$mask\" dev \"$interface\"\nexit 0\n",
    )
    .unwrap();
    must(&format!("chmod +x {}", script.display()));
    let tag = std::process::id();
    let mut guests = Vec::new();
    let mut ips = Vec::new();
    for g in 0..2 {
        let name = format!("kapsel-t{tag}-{g}");
        must(&format!("ip netns add {name}"));
        guests.push(GuestNs(name.clone()));
        must(&format!(
            "{ns} ip link add kapsel-v{g} type veth peer name kapsel-g{g}"
        ));
        must(&format!("{ns} ip link set kapsel-g{g} netns {name}"));
        must(&format!("{ns} ip link set kapsel-v{g} master kapsel-t1 up"));
        must(&format!("ip netns exec {name} ip link set kapsel-g{g} up"));
        must(&format!(
            "ip netns exec {name} busybox udhcpc -i kapsel-g{g} -n -q -t 10 -T 1 -x hostname:guest{g} -s {}",
            script.display()
        ));
        let a = must(&format!(
            "ip netns exec {name} ip -4 -o addr show kapsel-g{g}"
        ));
        let ip = a
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string();
        assert!(ip.starts_with("10.77.0."), "{a}");
        ips.push(ip);
    }
    assert_ne!(ips[0], ips[1]);
    let leases = std::fs::read_to_string(d.dir.path().join("state/networks/t1/leases")).unwrap();
    assert!(
        leases.contains("guest0") && leases.contains("guest1"),
        "{leases}"
    );

    // Guest to host (the bridge address) and guest to guest.
    must(&format!(
        "ip netns exec {} busybox ping -c1 -W2 10.77.0.1",
        guests[0].0
    ));
    must(&format!(
        "ip netns exec {} busybox ping -c1 -W2 {}",
        guests[0].0, ips[1]
    ));
    must(&format!(
        "ip netns exec {} busybox ping -c1 -W2 {}",
        guests[1].0, ips[0]
    ));
    // DNS from dnsmasq: a guest finds the other by name.
    let (_, dns) = sh(&format!(
        "ip netns exec {} busybox nslookup guest1.kapsel 10.77.0.1",
        guests[0].0
    ));
    assert!(dns.contains(&ips[1]), "{dns}");

    // The metrics count bridge traffic.
    let m = d.client().metrics().unwrap();
    assert!(m.contains("kapsel_network_bytes_total{network=\"t1\",direction=\"rx\"}"));

    // A VM on the network gets a TAP on the bridge (the virtio-net device's backend).
    common::require_kvm();
    let mut r = common::request("vm-net", "idle", api::daemon::RestartPolicy::No);
    r.networks = vec!["t1".into()];
    let inst = d
        .client()
        .create(&r)
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    assert!(common::running(&inst), "{inst:?}");
    let tap = daemon::netsetup::tap_name("vm-net", 0);
    let link = must(&format!("{ns} ip -o link show {tap}"));
    assert!(link.contains("master kapsel-t1"), "{link}");
    // Per-guest NIC counters come from its TAP.
    let m = d.client().metrics().unwrap();
    for direction in ["rx", "tx"] {
        let series = format!(
            "kapsel_instance_network_bytes_total{{name=\"vm-net\",nic=\"0\",network=\"t1\",direction=\"{direction}\"}}"
        );
        assert!(m.contains(&series), "{series} missing from:\n{m}");
    }
    // NIC limits apply live to the running VMM's card
    let upd = api::daemon::InstanceUpdate {
        net_limits: Some(api::vm::NetLimits {
            rx: api::vm::IoLimit {
                bytes_per_sec: Some(1 << 20),
                ..Default::default()
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    d.client().update("vm-net", &upd).unwrap();
    let vm = client::vm::VmClient::new(client::Endpoint::new(
        d.dir.path().join("run/instances/vm-net/api.sock"),
    ));
    let now = vm.net_limits("net0").unwrap();
    assert_eq!(now.rx.bytes_per_sec, Some(1 << 20));
    assert!(now.tx.is_unlimited());
    // dnsmasq learns the instance's name for its NIC's MAC (DNS by instance name)
    let host = d.dir.path().join("state/networks/t1/hosts/vm-net");
    let entry = std::fs::read_to_string(&host).unwrap();
    assert_eq!(
        entry,
        format!("{},vm-net\n", daemon::netsetup::mac("vm-net", 0))
    );
    let e = d.client().delete_network("t1").unwrap_err();
    assert!(e.to_string().contains("vm-net"), "{e}");
    d.client().delete("vm-net", true).unwrap();
    assert!(!sh(&format!("{ns} ip link show {tap}")).0);
    assert!(!host.exists(), "host entry left after delete");

    // An unused network is removed completely.
    let dnsmasq_pid: i32 =
        std::fs::read_to_string(d.dir.path().join("state/networks/t1/dnsmasq.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
    // dnsmasq is supervised: killed, it comes back.
    // SAFETY: kill takes plain integers.
    unsafe { libc::kill(dnsmasq_pid, libc::SIGKILL) };
    let pid_file = d.dir.path().join("state/networks/t1/dnsmasq.pid");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(6);
    let dnsmasq_pid = loop {
        let now: i32 = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if now != dnsmasq_pid && common::alive(now) {
            break now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "dnsmasq was not restarted"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    d.client().delete_network("t1").unwrap();
    assert!(!sh(&format!("{ns} ip link show kapsel-t1")).0);
    assert!(!sh(&format!("{ns} nft list table ip kapsel_t1")).0);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!common::alive(dnsmasq_pid));
}

/// Root is needed for namespaces.
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
