//! The host daemon with real Linux guests, in the nested test bed: L1 runs `kapsel daemon`
//! with a managed network (bridge, dnsmasq and nftables carried into L1 with their shared
//! libraries), `kapsel launch` starts two Linux VMs on it, and everything after that goes
//! through `kapsel console NAME`: the guest's output shows, typed commands run, Ctrl-]
//! detaches and leaves the guest running (a second attach still works). Each guest takes a
//! DHCP lease on its virtio-net card (busybox udhcpc), finds the other by its instance name
//! through dnsmasq's DNS, pings it and the bridge.
//!
//! A busybox container (`kapsel launch --container`, its image carried in as a tarball) runs
//! `httpd` on the same network: the VM resolves it by name (NAME, NAME.kapsel), pings it and
//! fetches its page; the container resolves and pings the VM by name; L1, the host, fetches
//! the page through the bridge; `kapsel exec -t` runs piped input on the container's terminal.
//!
//! L1 runs from its initramfs, and `pivot_root` refuses a root on the initial ramfs, so no
//! container could start there: the scenario first moves into a tmpfs root (the L1 files
//! bind-mounted into it, `/proc`, `/sys`, `/dev` and cgroup v1 hierarchies as on the CI
//! host mounted afresh), moves it over `/` and runs the rest chrooted there (what
//! `switch_root` does), as on a host whose root is a real mount. (Merely chrooting into it
//! is not enough: `setns` into the container's mount namespace, as `kapsel exec` does, puts
//! a process at the mount on top of the namespace's root, which would be the initramfs.)

#[path = "common/daemon_console.rs"]
mod daemon_console;

use std::time::Duration;

use daemon_console::{step_rc, transcripts, HELPERS};
use test_infra::scenario::{field, sh_quote};
use test_infra::TestBed;

const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 rdinit=/init quiet guest.exit=shell";

/// Moves L1 into a tmpfs root (see above) and runs the scenario again there; the console
/// helpers ([`HELPERS`]) follow it.
const SWITCH_ROOT: &str = r#"
if [ -z "$KAPSEL_INNER" ]; then
  N=/newroot; mkdir -p $N; mount -t tmpfs -o mode=755 tmpfs $N
  for d in bin sbin usr lib lib64 scenario; do [ -d /$d ] && mkdir -p $N/$d && mount --bind /$d $N/$d; done
  mkdir -p $N/proc $N/sys $N/dev $N/run $N/tmp $N/etc $N/var
  mount -t proc proc $N/proc; mount -t sysfs sysfs $N/sys; mount -t devtmpfs devtmpfs $N/dev
  mkdir -p $N/dev/pts; mount -t devpts -o ptmxmode=0666 devpts $N/dev/pts
  mount -t tmpfs tmpfs $N/run; mount -t tmpfs tmpfs $N/tmp; chmod 1777 $N/tmp
  mount -t tmpfs -o mode=755 tmpfs $N/sys/fs/cgroup
  for c in cpu cpuacct cpuset memory devices freezer blkio pids; do
    mkdir -p $N/sys/fs/cgroup/$c
    mount -t cgroup -o $c cgroup $N/sys/fs/cgroup/$c || echo "DTEST cgroup-$c not mounted"
  done
  # as switch_root does: the new root moved over the old one, not merely chrooted into (a
  # process joining a container's mount namespace starts at the mount on top of `/`)
  cd $N && mount --move . / && KAPSEL_INNER=1 exec chroot . /bin/sh -c 'cd /scenario && exec /bin/sh ./run.sh'
  echo "DTEST switch-root failed"
fi
"#;

fn assert_step(out: &str, tag: &str) {
    assert_eq!(
        step_rc(out, tag),
        Some(0),
        "{tag} failed:\n{}",
        out.lines()
            .filter(|l| l.starts_with(&format!("DOUT {tag}:")) || l.contains("DTEST"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A guest's half of the DHCP setup: card up, lease with a script that sets the address and
/// the DNS server from the lease.
fn dhcp_cmds(name: &str) -> String {
    format!(
        "ip link set eth0 up; mkdir -p /etc; \
         echo '[ \"$1\" = bound ] && ip addr add $ip/$mask dev $interface && echo nameserver $dns > /etc/resolv.conf && echo LEASE=$ip; exit 0' > /tmp/dh; \
         chmod +x /tmp/dh; udhcpc -i eth0 -n -q -t 20 -T 1 -s /tmp/dh; echo END-{name}-dhcp-$((6*7))"
    )
}

/// Resolves `peer` (plain and `.kapsel`) through the bridge's dnsmasq, pings it and the bridge.
fn reach_cmds(name: &str, peer: &str) -> String {
    format!(
        "p=$(nslookup {peer} 10.77.0.1 | awk '/^Address/ {{a=$NF}} END {{print a}}'); echo PEER-IP=$p; \
         q=$(nslookup {peer}.kapsel 10.77.0.1 | awk '/^Address/ {{a=$NF}} END {{print a}}'); echo PEER-FQDN-IP=$q; \
         ping -c 3 -W 5 $p >/dev/null; echo PING-PEER-RC=$?; \
         ping -c 3 -W 5 10.77.0.1 >/dev/null; echo PING-BRIDGE-RC=$?; echo END-{name}-reach-$((6*7))"
    )
}

/// The VM's view of the container `web`: its address by name (plain and `.kapsel`), a ping
/// by name, and its httpd's page.
fn web_cmds(name: &str) -> String {
    format!(
        "w=$(nslookup web 10.77.0.1 | awk '/^Address/ {{a=$NF}} END {{print a}}'); echo WEB-IP=$w; \
         v=$(nslookup web.kapsel 10.77.0.1 | awk '/^Address/ {{a=$NF}} END {{print a}}'); echo WEB-FQDN-IP=$v; \
         ping -c 3 -W 5 web >/dev/null; echo PING-WEB-RC=$?; \
         wget -qO- http://web/ | sed 's/^/WEB-PAGE: /'; echo END-{name}-web-$((6*7))"
    )
}

/// The busybox root filesystem as a tarball in `dir` (the daemon's image import unpacks it).
fn busybox_tarball(dir: &std::path::Path) -> std::path::PathBuf {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/container-rootfs.sh"
    );
    let out = std::process::Command::new(script)
        .arg("busybox")
        .output()
        .expect("run container-rootfs.sh");
    assert!(
        out.status.success(),
        "container-rootfs.sh busybox: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rootfs = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let tar = dir.join("busybox-rootfs.tar");
    let st = std::process::Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .args(["-C", &rootfs, "."])
        .status()
        .expect("run tar");
    assert!(st.success(), "tar of {rootfs}");
    tar
}

#[test]
fn testbed_daemon_console_dhcp_dns_and_guest_to_guest() {
    let scenario = format!(
        r#"{SWITCH_ROOT}{HELPERS}
# dnsmasq drops to nobody; L1's initramfs has no user database
mkdir -p /etc /var/lib
printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > /etc/passwd
printf 'root:x:0:\ndip:x:30:\nnogroup:x:65534:\n' > /etc/group
export KAPSEL_SOCKET=/run/kapsel/kapsel.sock
mkdir -p /run/kapsel
kapsel daemon --state-dir /var/lib/kapsel --run-dir /run/kapsel >/tmp/daemon.log 2>&1 &
i=0; while [ ! -S $KAPSEL_SOCKET ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
step import kapsel image import linux --kernel bzImage --initrd initramfs.cpio.gz --cmdline {cmdline}
step import-bb kapsel image import bb --rootfs busybox-rootfs.tar
step network kapsel network create lan --address 10.77.0.1/24
step launch-alpha kapsel launch linux alpha --memory 256M --net lan
step launch-beta kapsel launch linux beta --memory 256M --net lan
step launch-web kapsel launch --container bb web --net lan -- httpd -f -p 80 -h /var/www
console alpha 240 END-alpha-dhcp-42 {dhcp_alpha}
console beta 240 END-beta-dhcp-42 {dhcp_beta}
# the container: its resolver, the VM by name
step ct-resolv kapsel exec web -- cat /etc/resolv.conf
step ct-lookup kapsel exec web -- nslookup -type=a alpha
step ct-ping kapsel exec web -- ping -c 3 -W 5 alpha
step ct-ping-fqdn kapsel exec web -- ping -c 1 -W 5 alpha.kapsel
step ct-exec-t sh -c 'printf "echo in-\$((6*7)); exit 5\n" | kapsel exec -t web -- sh'
# the host (L1): the container's name in dnsmasq, its page through the bridge
w=$(nslookup web 10.77.0.1 | awk '/^Address/ {{a=$NF}} END {{print a}}')
say "host-web-ip $w"
step host-wget wget -qO- http://$w/
console alpha 120 END-alpha-reach-42 {reach_alpha}
console alpha 120 END-alpha-web-42 {web_alpha}
console beta 120 END-beta-reach-42 {reach_beta}
step list kapsel list
step leases cat /var/lib/kapsel/networks/lan/leases
step stop-alpha kapsel stop alpha
step delete-alpha kapsel delete alpha
step delete-beta kapsel delete beta --force
step delete-web kapsel delete web --force
step network-delete kapsel network delete lan
if ip link show kapsel-lan >/dev/null 2>&1; then say "bridge left"; else say "bridge gone"; fi
sed 's/^/DLOG: /' /tmp/daemon.log
"#,
        cmdline = sh_quote(CMDLINE),
        dhcp_alpha = sh_quote(&dhcp_cmds("alpha")),
        dhcp_beta = sh_quote(&dhcp_cmds("beta")),
        reach_alpha = sh_quote(&reach_cmds("alpha", "beta")),
        reach_beta = sh_quote(&reach_cmds("beta", "alpha")),
        web_alpha = sh_quote(&web_cmds("alpha")),
    );
    let tmp = std::env::temp_dir().join(format!("kapsel-testbed-daemon-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let tarball = busybox_tarball(&tmp);
    let run = TestBed::new("daemon")
        .with_kapsel()
        // the daemon's network tools, with their libraries (busybox `ip` has no tuntap)
        .binary("/usr/sbin/dnsmasq")
        .binary("/usr/sbin/nft")
        .binary("/usr/sbin/ip")
        .guest_file("bzImage", "bzImage")
        .guest_file("initramfs-busybox.cpio.gz", "initramfs.cpio.gz")
        .file(&tarball, "busybox-rootfs.tar")
        .memory("3G")
        .timeout(Duration::from_secs(900))
        .scenario(&scenario)
        .run();
    let _ = std::fs::remove_dir_all(&tmp);
    let out = run.output.replace('\r', "");
    println!("{}", run.result_line().unwrap_or("no NESTED-RESULT"));
    for l in out.lines().filter(|l| l.starts_with("DTEST ")) {
        println!("  {l}");
    }
    for tag in [
        "import",
        "import-bb",
        "network",
        "launch-alpha",
        "launch-beta",
        "launch-web",
    ] {
        assert_step(&out, tag);
    }

    let mut leases = Vec::new();
    for (name, attaches) in [("alpha", 3), ("beta", 2)] {
        let t = transcripts(&out, name);
        assert_eq!(t.len(), attaches, "{name}: console sessions:\n{out}");
        // every attach: the guest answered typed input, and Ctrl-] detached
        let sessions = out
            .lines()
            .filter(|l| l.starts_with(&format!("DTEST console-{name} ")))
            .collect::<Vec<_>>();
        assert_eq!(sessions.len(), attaches, "{sessions:?}");
        for s in &sessions {
            assert!(
                s.contains("rc=0 up=1 detached=1"),
                "{s}; transcripts:\n{}",
                t.join("\n----\n")
            );
        }
        assert!(
            out.contains(&format!("DERR {name}: Detached from {name}")),
            "no detach message for {name}"
        );
        let lease = field(t[0], "LEASE=")
            .filter(|ip| ip.starts_with("10.77.0."))
            .unwrap_or_else(|| panic!("{name}: no DHCP lease; console:\n{}", t[0]))
            .to_string();
        assert!(t[1].contains(&format!("END-{name}-reach-42")), "{}", t[1]);
        leases.push(lease);
    }
    assert_ne!(leases[0], leases[1], "two guests, two leases");

    for (i, (name, peer)) in [("alpha", "beta"), ("beta", "alpha")].iter().enumerate() {
        let t = transcripts(&out, name)[1];
        let peer_ip = &leases[1 - i];
        assert_eq!(
            field(t, "PEER-IP="),
            Some(peer_ip.as_str()),
            "{name}: DNS name {peer}; console:\n{t}"
        );
        assert_eq!(
            field(t, "PEER-FQDN-IP="),
            Some(peer_ip.as_str()),
            "{name}: DNS name {peer}.kapsel; console:\n{t}"
        );
        assert_eq!(
            field(t, "PING-PEER-RC="),
            Some("0"),
            "{name} → {peer} ping; console:\n{t}"
        );
        assert_eq!(
            field(t, "PING-BRIDGE-RC="),
            Some("0"),
            "{name} → bridge ping; console:\n{t}"
        );
    }

    // The container on the same bridge: the VM finds it by name, pings it and gets its
    // page; it finds the VM by name and pings it; the host gets its page through the bridge.
    let web_ip = "10.77.0.254"; // the top of the pool, the first container address
    assert!(
        out.contains(&format!("DTEST host-web-ip {web_ip}")),
        "the host's lookup of web:\n{out}"
    );
    let page = "<h1>hello from a kapsel container</h1>";
    for tag in [
        "ct-resolv",
        "ct-lookup",
        "ct-ping",
        "ct-ping-fqdn",
        "host-wget",
    ] {
        assert_step(&out, tag);
    }
    let dout = |tag: &str| -> Vec<&str> {
        let p = format!("DOUT {tag}: ");
        out.lines()
            .filter_map(|l| l.strip_prefix(p.as_str()))
            .collect()
    };
    assert!(
        dout("ct-resolv").contains(&"nameserver 10.77.0.1"),
        "{:?}",
        dout("ct-resolv")
    );
    assert!(
        dout("ct-lookup")
            .iter()
            .any(|l| l.starts_with("Address") && l.ends_with(leases[0].as_str())),
        "the container's lookup of alpha ({}): {:?}",
        leases[0],
        dout("ct-lookup")
    );
    assert_eq!(dout("host-wget"), [page]);
    // interactive exec: typed input runs on the container's terminal, its exit code is ours
    assert_eq!(
        step_rc(&out, "ct-exec-t"),
        Some(5),
        "{:?}",
        dout("ct-exec-t")
    );
    assert!(
        dout("ct-exec-t").iter().any(|l| l.trim_end() == "in-42"),
        "{:?}",
        dout("ct-exec-t")
    );
    let t = transcripts(&out, "alpha")[2];
    assert_eq!(field(t, "WEB-IP="), Some(web_ip), "alpha → web:\n{t}");
    assert_eq!(
        field(t, "WEB-FQDN-IP="),
        Some(web_ip),
        "alpha → web.kapsel:\n{t}"
    );
    assert_eq!(field(t, "PING-WEB-RC="), Some("0"), "alpha pings web:\n{t}");
    assert!(
        t.lines()
            .any(|l| l.trim_end() == format!("WEB-PAGE: {page}")),
        "alpha fetches web's page:\n{t}"
    );

    // detaching left both guests running; the daemon's view agrees
    assert_step(&out, "list");
    for name in ["alpha", "beta", "web"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("DOUT list: ") && l.contains(name) && l.contains("running")),
            "{name} not running after the console sessions:\n{out}"
        );
    }
    let lease_file: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("DOUT leases: "))
        .collect();
    for (name, ip) in ["alpha", "beta"].iter().zip(&leases) {
        assert!(
            lease_file
                .iter()
                .any(|l| l.contains(*name) && l.contains(ip.as_str())),
            "dnsmasq lease of {name} ({ip}) under its instance name: {lease_file:?}"
        );
    }
    for tag in [
        "stop-alpha",
        "delete-alpha",
        "delete-beta",
        "delete-web",
        "network-delete",
    ] {
        assert_step(&out, tag);
    }
    assert!(out.contains("DTEST bridge gone"), "bridge left behind");
}
