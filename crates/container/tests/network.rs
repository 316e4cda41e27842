//! A web server inside a container, reached over a veth pair from a private network
//! namespace the test creates (no address is ever added to the host's own namespace).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use container::{Container, CreateOptions};
use std::process::Command;
use std::time::{Duration, Instant};

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("iproute2 installed");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deletes the test namespace even when an assertion fails.
struct NetNs(String);

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn httpd_in_a_container_is_reachable_over_veth() {
    let cfg = config("web", &["httpd", "-f", "-p", "80", "-h", "/var/www"]);
    let mut c = Container::create(&cfg, &CreateOptions::oci(state_root())).unwrap();
    let pid = c.pid().to_string();
    let ns = NetNs(format!("kapsel-t{}", std::process::id()));
    ip(&["netns", "add", &ns.0]);
    let (host_if, ctr_if) = (
        format!("kh{}", std::process::id()),
        format!("kc{}", std::process::id()),
    );
    // Both ends are created inside namespaces: the test's own and the container's.
    ip(&[
        "-n", &ns.0, "link", "add", &host_if, "type", "veth", "peer", "name", &ctr_if, "netns",
        &pid,
    ]);
    ip(&[
        "-n",
        &ns.0,
        "addr",
        "add",
        "10.234.77.1/30",
        "dev",
        &host_if,
    ]);
    ip(&["-n", &ns.0, "link", "set", &host_if, "up"]);
    let nsenter = |args: &[&str]| {
        let st = Command::new("nsenter")
            .args(["-t", &pid, "-n", "ip"])
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "nsenter ip {args:?}");
    };
    nsenter(&["addr", "add", "10.234.77.2/30", "dev", &ctr_if]);
    nsenter(&["link", "set", &ctr_if, "up"]);
    nsenter(&["link", "set", "lo", "up"]);
    c.start().unwrap();

    let deadline = Instant::now() + Duration::from_secs(5);
    let body = loop {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.0,
                "wget",
                "-q",
                "-T",
                "1",
                "-O",
                "-",
                "http://10.234.77.2/",
            ])
            .output()
            .unwrap();
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "httpd unreachable: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(body.contains("hello from a kapsel container"), "{body}");
    c.kill(libc::SIGTERM, false).unwrap();
    c.delete(true).unwrap();
}
