//! The host daemon with real Linux guests, in the nested test bed: L1 runs `kapsel daemon`
//! with a managed network (bridge, dnsmasq and nftables carried into L1 with their shared
//! libraries), `kapsel launch` starts two Linux VMs on it, and everything after that goes
//! through `kapsel console NAME`: the guest's output shows, typed commands run, Ctrl-]
//! detaches and leaves the guest running (a second attach still works). Each guest takes a
//! DHCP lease on its virtio-net card (busybox udhcpc), finds the other by its instance name
//! through dnsmasq's DNS, pings it and the bridge.

use std::time::Duration;
use test_infra::scenario::sh_quote;
use test_infra::TestBed;

const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 rdinit=/init quiet guest.exit=shell";

/// `console NAME TIMEOUT MARK COMMANDS`: attaches `kapsel console NAME` with stdin from a
/// FIFO, waits until the guest shell answers (`UP-MARK-3`: the VMM replays recent console
/// output to a new client, so every session needs its own marks), types COMMANDS, waits
/// until the guest printed MARK, detaches with Ctrl-] and prints the transcript between `DCONSOLE-BEGIN/END NAME`
/// and `DTEST console-NAME rc=… up=… detached=…`. `step TAG CMD…` runs a command and
/// prints its output as `DOUT TAG: …` and `DTEST TAG rc=…`.
const FUNCTIONS: &str = r#"
trap '' PIPE  # a console that ended early must fail its step, not kill the scenario
say() { echo "DTEST $*"; }
step() { _tag=$1; shift; _o=$("$@" 2>&1); _rc=$?; printf '%s\n' "$_o" | sed "s/^/DOUT $_tag: /"; say "$_tag rc=$_rc"; }
console() {
  _n=$1 _to=$2 _mark=$3 _cmds=$4
  _in=/tmp/c.$_n.in _out=/tmp/c.$_n.out
  rm -f "$_in"; mkfifo "$_in"; : > "$_out"
  kapsel console "$_n" <"$_in" >"$_out" 2>"/tmp/c.$_n.err" &
  _pid=$!
  exec 3>"$_in"
  _i=0 _up=0
  while [ $_i -lt $((_to * 2)) ] && kill -0 $_pid 2>/dev/null; do
    if grep -q "UP-$_mark-3" "$_out"; then _up=1; break; fi
    [ $((_i % 4)) = 0 ] && printf 'echo UP-%s-$((1+2))\n' "$_mark" >&3
    sleep 0.5; _i=$((_i + 1))
  done
  [ $_up = 1 ] && printf '%s\n' "$_cmds" >&3
  while [ $_i -lt $((_to * 2)) ] && ! grep -q "^$_mark" "$_out"; do sleep 0.5; _i=$((_i + 1)); done
  printf '\035' >&3
  _j=0; while kill -0 $_pid 2>/dev/null && [ $_j -lt 20 ]; do sleep 0.5; _j=$((_j + 1)); done
  _det=1; if kill -0 $_pid 2>/dev/null; then _det=0; kill $_pid; fi
  wait $_pid; _rc=$?
  exec 3>&-
  echo "DCONSOLE-BEGIN $_n"; tr -d '\r' < "$_out"; echo; echo "DCONSOLE-END $_n"
  sed "s/^/DERR $_n: /" "/tmp/c.$_n.err"
  say "console-$_n rc=$_rc up=$_up detached=$_det"
}
"#;

/// The value after `KEY` on the last line of `text` that has it.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .rev()
        .find_map(|l| l.split_once(key).map(|(_, rest)| rest))
        .and_then(|rest| rest.split_whitespace().next())
}

/// The transcripts of every `console` call on `name`, in order.
fn transcripts<'a>(out: &'a str, name: &str) -> Vec<&'a str> {
    let begin = format!("DCONSOLE-BEGIN {name}\n");
    let end = format!("DCONSOLE-END {name}");
    out.match_indices(&begin)
        .filter_map(|(i, _)| {
            let rest = &out[i + begin.len()..];
            rest.find(&end).map(|j| &rest[..j])
        })
        .collect()
}

/// The `DTEST TAG rc=…` code of a step.
fn step_rc(out: &str, tag: &str) -> Option<i32> {
    field(out, &format!("DTEST {tag} rc=")).and_then(|s| s.parse().ok())
}

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

/// A guest's half of the DHCP setup: card up, lease with a script that sets the address.
fn dhcp_cmds(name: &str) -> String {
    format!(
        "ip link set eth0 up; \
         echo '[ \"$1\" = bound ] && ip addr add $ip/$mask dev $interface && echo LEASE=$ip; exit 0' > /tmp/dh; \
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

#[test]
fn testbed_daemon_console_dhcp_dns_and_guest_to_guest() {
    let scenario = format!(
        r#"{FUNCTIONS}
# dnsmasq drops to nobody; L1's initramfs has no user database
mkdir -p /etc /var/lib
printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > /etc/passwd
printf 'root:x:0:\ndip:x:30:\nnogroup:x:65534:\n' > /etc/group
export KAPSEL_SOCKET=/run/kapsel/kapsel.sock
mkdir -p /run/kapsel
kapsel daemon --state-dir /var/lib/kapsel --run-dir /run/kapsel >/tmp/daemon.log 2>&1 &
i=0; while [ ! -S $KAPSEL_SOCKET ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
step import kapsel image import linux --kernel bzImage --initrd initramfs.cpio.gz --cmdline {cmdline}
step network kapsel network create lan --address 10.77.0.1/24
step launch-alpha kapsel launch linux alpha --memory 256M --net lan
step launch-beta kapsel launch linux beta --memory 256M --net lan
console alpha 240 END-alpha-dhcp-42 {dhcp_alpha}
console beta 240 END-beta-dhcp-42 {dhcp_beta}
console alpha 120 END-alpha-reach-42 {reach_alpha}
console beta 120 END-beta-reach-42 {reach_beta}
step list kapsel list
step leases cat /var/lib/kapsel/networks/lan/leases
step stop-alpha kapsel stop alpha
step delete-alpha kapsel delete alpha
step delete-beta kapsel delete beta --force
step network-delete kapsel network delete lan
if ip link show kapsel-lan >/dev/null 2>&1; then say "bridge left"; else say "bridge gone"; fi
sed 's/^/DLOG: /' /tmp/daemon.log
"#,
        cmdline = sh_quote(CMDLINE),
        dhcp_alpha = sh_quote(&dhcp_cmds("alpha")),
        dhcp_beta = sh_quote(&dhcp_cmds("beta")),
        reach_alpha = sh_quote(&reach_cmds("alpha", "beta")),
        reach_beta = sh_quote(&reach_cmds("beta", "alpha")),
    );
    let run = TestBed::new("daemon")
        .with_kapsel()
        // the daemon's network tools, with their libraries (busybox `ip` has no tuntap)
        .binary("/usr/sbin/dnsmasq")
        .binary("/usr/sbin/nft")
        .binary("/usr/sbin/ip")
        .guest_file("bzImage", "bzImage")
        .guest_file("initramfs-busybox.cpio.gz", "initramfs.cpio.gz")
        .memory("3G")
        .timeout(Duration::from_secs(600))
        .scenario(&scenario)
        .run();
    let out = run.output.replace('\r', "");
    println!("{}", run.result_line().unwrap_or("no NESTED-RESULT"));
    for l in out.lines().filter(|l| l.starts_with("DTEST ")) {
        println!("  {l}");
    }
    for tag in ["import", "network", "launch-alpha", "launch-beta"] {
        assert_step(&out, tag);
    }

    let mut leases = Vec::new();
    for name in ["alpha", "beta"] {
        let t = transcripts(&out, name);
        assert_eq!(t.len(), 2, "{name}: two console sessions expected:\n{out}");
        // every attach: the guest answered typed input, and Ctrl-] detached
        let sessions = out
            .lines()
            .filter(|l| l.starts_with(&format!("DTEST console-{name} ")))
            .collect::<Vec<_>>();
        assert_eq!(sessions.len(), 2, "{sessions:?}");
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

    // detaching left both guests running; the daemon's view agrees
    assert_step(&out, "list");
    for name in ["alpha", "beta"] {
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
        "network-delete",
    ] {
        assert_step(&out, tag);
    }
    assert!(out.contains("DTEST bridge gone"), "bridge left behind");
}
