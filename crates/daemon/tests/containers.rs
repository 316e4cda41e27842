//! Containers managed by the daemon, with real containers from the busybox root filesystem
//! (`scripts/container-rootfs.sh busybox`): launch, exec output and exit codes, the console,
//! stop/start keeping the writable layer, pause/resume, live limits, snapshots of the upper
//! directory, a killed monitor restarted per policy, a killed daemon leaving containers
//! running and re-attaching, and an httpd in one container reached from another over the
//! bridge from another container, from the bridge's side and from a DHCP-configured stand-in
//! for a VM on the same bridge, which the container reaches in turn, and every container
//! named NAME and NAME.kapsel in the bridge's dnsmasq (also after dnsmasq restarts, gone on
//! delete; the container's resolv.conf points at it) (the daemon in its own network namespace),
//! and interactive exec (`kapsel exec -t`) from a pipe, through raw API frames and from a real
//! terminal (raw mode, window size, Ctrl-C); exec from a daemon running in a chroot.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use api::daemon::{
    CreateInstance, CreateNetwork, ExecRequest, ExecResult, ImportImage, Instance, InstanceKind,
    InstanceStatus, InstanceUpdate, RestartPolicy, TermSize,
};
use api::exec_stream::Frame;
use common::{alive, running, TestDaemon};

/// A first process that ends at once on SIGTERM (a shell as pid 1 ignores it).
const IDLE: &str = "trap 'exit 0' TERM; while :; do sleep 1; done";

fn busybox_rootfs() -> PathBuf {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS
        .get_or_init(|| {
            let script =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/container-rootfs.sh");
            let out = Command::new(script).arg("busybox").output().unwrap();
            assert!(
                out.status.success(),
                "container-rootfs.sh busybox: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        })
        .clone()
}

fn import_busybox(d: &TestDaemon) {
    let img = d
        .client()
        .import_image(&ImportImage {
            name: "busybox".into(),
            kernel: String::new(),
            rootfs: Some(busybox_rootfs().display().to_string()),
            initrd: None,
            disk: None,
            cmdline: None,
        })
        .unwrap_or_else(|e| panic!("import: {e}\n{}", d.log()));
    assert_eq!(img.kind, InstanceKind::Container);
}

fn request(name: &str, command: &[&str], restart: RestartPolicy) -> CreateInstance {
    let mut req = common::request(name, "", restart);
    req.image = "busybox".into();
    req.kind = Some(InstanceKind::Container);
    req.cmdline = String::new();
    req.command = command.iter().map(|s| s.to_string()).collect();
    req
}

fn launch(d: &TestDaemon, req: &CreateInstance) -> Instance {
    let inst = d
        .client()
        .create(req)
        .unwrap_or_else(|e| panic!("launch {}: {e}\n{}", req.name, d.log()));
    assert_eq!(inst.kind, InstanceKind::Container);
    assert_eq!(inst.status, InstanceStatus::Running, "{inst:?}");
    inst
}

/// A request to run `command` without a terminal, input or time limit.
fn exec_request(command: &[&str]) -> ExecRequest {
    ExecRequest {
        command: command.iter().map(|s| s.to_string()).collect(),
        tty: false,
        timeout_secs: None,
        interactive: false,
        size: None,
    }
}

fn exec(d: &TestDaemon, name: &str, script: &str) -> ExecResult {
    d.client()
        .exec(
            name,
            &ExecRequest {
                timeout_secs: Some(30),
                ..exec_request(&["sh", "-c", script])
            },
        )
        .unwrap_or_else(|e| panic!("exec in {name}: {e}\n{}", d.log()))
}

fn kill9(pid: i32) {
    // SAFETY: kill takes plain integers.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// Reads the console until `want` shows up.
fn console_until(stream: &mut UnixStream, want: &str) -> String {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let mut buf = [0u8; 4096];
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        let text = String::from_utf8_lossy(&seen).into_owned();
        if text.contains(want) {
            return text;
        }
    }
    panic!(
        "console never showed {want:?}: {:?}",
        String::from_utf8_lossy(&seen)
    );
}

/// The container's memory limit in bytes, from its cgroup (v1 or v2).
fn memory_limit(d: &TestDaemon, name: &str) -> u64 {
    let v1 = d.cgroup_dir("memory", name).join("memory.limit_in_bytes");
    let v2 = Path::new("/sys/fs/cgroup")
        .join(&d.cgroup_root)
        .join(name)
        .join("memory.max");
    let text = std::fs::read_to_string(&v1)
        .or_else(|_| std::fs::read_to_string(&v2))
        .unwrap_or_else(|e| panic!("no memory limit file for {name}: {e}"));
    text.trim().parse().unwrap()
}

#[test]
fn launch_exec_console_stop_start_pause_limits_snapshot() {
    let d = TestDaemon::start();
    import_busybox(&d);
    let c = d.client();
    let mut req = request(
        "box",
        &["sh", "-c", &format!("echo console-hello; {IDLE}")],
        RestartPolicy::No,
    );
    req.memory_mib = 128;
    req.pids_limit = Some(64);
    let inst = launch(&d, &req);
    let list = c.list().unwrap();
    let row = list.iter().find(|i| i.name == "box").unwrap();
    assert_eq!(
        (row.kind, row.status),
        (InstanceKind::Container, InstanceStatus::Running)
    );

    // exec: output, errors and exit code come back.
    let r = exec(&d, "box", "cat /etc/issue; echo oops >&2; exit 3");
    assert_eq!(r.exit_code, 3, "{r:?}");
    assert_eq!(r.stdout, "kapsel busybox rootfs\n");
    assert_eq!(r.stderr, "oops\n");
    // The container's own pid namespace: its first process is pid 1.
    let r = exec(&d, "box", "cat /proc/1/cmdline | tr '\\0' ' '");
    assert!(r.stdout.starts_with("sh -c echo console-hello"), "{r:?}");
    let r = d
        .client()
        .exec(
            "box",
            &ExecRequest {
                tty: true,
                ..exec_request(&["sh", "-c", "test -t 1 && echo tty"])
            },
        )
        .unwrap();
    assert_eq!((r.exit_code, r.stdout.trim()), (0, "tty"), "{r:?}");

    // The console shows the container's output.
    let mut con = UnixStream::connect(inst.console.as_deref().unwrap()).unwrap();
    console_until(&mut con, "console-hello");
    drop(con);

    // Files written in the container survive stop and start (the writable layer persists).
    assert_eq!(exec(&d, "box", "echo kept > /data").exit_code, 0);
    let stopped = c.stop("box", false).unwrap();
    assert_eq!(stopped.status, InstanceStatus::Stopped, "{stopped:?}");
    assert_eq!(stopped.last_exit.as_deref(), Some("exit 0"));
    assert!(!alive(inst.pid.unwrap()));
    let back = c.start("box").unwrap();
    assert!(running(&back));
    assert_eq!(exec(&d, "box", "cat /data").stdout, "kept\n");

    // Pause freezes every process; resume thaws them.
    let paused = c.pause("box").unwrap();
    assert_eq!(paused.status, InstanceStatus::Paused);
    let freezer = d.cgroup_dir("freezer", "box").join("freezer.state");
    if freezer.exists() {
        assert_eq!(std::fs::read_to_string(&freezer).unwrap().trim(), "FROZEN");
    }
    let e = d
        .client()
        .exec("box", &exec_request(&["true"]))
        .unwrap_err();
    assert!(e.to_string().contains("paused"), "{e}");
    assert!(running(&c.resume("box").unwrap()));
    assert_eq!(exec(&d, "box", "echo alive").stdout, "alive\n");

    // Live limits: the memory limit changes in the running container's cgroup.
    assert_eq!(memory_limit(&d, "box"), 128 << 20);
    c.update(
        "box",
        &InstanceUpdate {
            memory_mib: Some(96),
            pids_limit: Some(16),
            ..InstanceUpdate::default()
        },
    )
    .unwrap();
    assert_eq!(memory_limit(&d, "box"), 96 << 20);
    let pids_max = d.cgroup_dir("pids", "box").join("pids.max");
    if pids_max.exists() {
        assert_eq!(std::fs::read_to_string(&pids_max).unwrap().trim(), "16");
    }
    c.update(
        "box",
        &InstanceUpdate {
            cpu_cap_percent: Some(50),
            cpu_weight: Some(200),
            ..InstanceUpdate::default()
        },
    )
    .unwrap();
    let quota = d.cgroup_dir("cpu", "box").join("cpu.cfs_quota_us");
    if quota.exists() {
        assert_eq!(std::fs::read_to_string(&quota).unwrap().trim(), "50000");
        let shares = d.cgroup_dir("cpu", "box").join("cpu.shares");
        assert_eq!(std::fs::read_to_string(&shares).unwrap().trim(), "2048");
    }

    // Snapshot of the upper directory (taken frozen), then restore into a stopped container.
    let snap = c.create_snapshot("box", "s1").unwrap();
    assert!(
        Path::new(&snap.path).join("upper/data").exists(),
        "{snap:?}"
    );
    assert_eq!(exec(&d, "box", "rm /data; echo new > /later").exit_code, 0);
    let e = c.restore_snapshot("box", "s1").unwrap_err();
    assert!(e.to_string().contains("stop it"), "{e}");
    c.stop("box", false).unwrap();
    c.restore_snapshot("box", "s1").unwrap();
    c.start("box").unwrap();
    let r = exec(&d, "box", "cat /data; test -e /later || echo no-later");
    assert_eq!(r.stdout, "kept\nno-later\n", "{r:?}");
    assert_eq!(c.snapshots("box").unwrap().len(), 1);
    let before = c.get("box").unwrap().pid;
    let restarted = c.restart("box").unwrap();
    assert!(
        running(&restarted) && restarted.pid != before,
        "{restarted:?}"
    );
    assert_eq!(exec(&d, "box", "cat /data").stdout, "kept\n");
    c.delete_snapshot("box", "s1").unwrap();

    // Copy: the new container starts from a copy of the writable layer.
    c.copy("box", "box2").unwrap();
    let copy = c.start("box2").unwrap();
    assert_eq!(copy.kind, InstanceKind::Container);
    assert_eq!(exec(&d, "box2", "cat /data").stdout, "kept\n");

    // An interactive shell on the console.
    let sh = launch(&d, &request("shell", &[], RestartPolicy::No));
    let mut con = UnixStream::connect(sh.console.as_deref().unwrap()).unwrap();
    con.write_all(b"echo mark$((40+2))\n").unwrap();
    console_until(&mut con, "mark42");

    // Exec is refused for VMs' verbs and stopped containers with clear errors.
    c.stop("box2", true).unwrap();
    let e = c.exec("box2", &exec_request(&["true"])).unwrap_err();
    assert!(e.to_string().contains("stopped"), "{e}");

    for n in ["box", "box2", "shell"] {
        c.delete(n, true).unwrap();
    }
    assert!(!d.cgroup_dir("memory", "box").exists());
    assert!(c.list().unwrap().is_empty());
}

#[test]
fn killed_monitor_is_restarted_per_policy() {
    let d = TestDaemon::start();
    import_busybox(&d);
    let c = d.client();
    let onfail = launch(
        &d,
        &request("onfail", &["sh", "-c", IDLE], RestartPolicy::OnFailure),
    );
    let never = launch(
        &d,
        &request("never", &["sh", "-c", IDLE], RestartPolicy::No),
    );
    assert_eq!(exec(&d, "onfail", "echo before > /f").exit_code, 0);
    let (p1, p2) = (onfail.pid.unwrap(), never.pid.unwrap());
    kill9(p1);
    kill9(p2);
    let back = d.wait_for("onfail", "a restarted monitor", |i| {
        running(i) && i.pid.is_some_and(|p| p != p1)
    });
    assert_eq!(back.restarts, 1);
    assert_eq!(back.last_exit.as_deref(), Some("signal 9"));
    // The restarted container has the same files and is the only one left.
    let r = exec(&d, "onfail", "cat /f; ps -o pid= | wc -l");
    assert!(r.stdout.starts_with("before\n"), "{r:?}");
    let gone = d.wait_for("never", "an error state", |i| {
        i.status == InstanceStatus::Error
    });
    assert_eq!(gone.last_exit.as_deref(), Some("signal 9"));
    // The container of the monitor that is not restarted was ended with it.
    let tasks = d.cgroup_dir("pids", "never").join("tasks");
    assert!(
        std::fs::read_to_string(&tasks)
            .unwrap_or_default()
            .trim()
            .is_empty(),
        "container of 'never' still has processes"
    );
    c.delete("onfail", true).unwrap();
    c.delete("never", true).unwrap();

    // A program that fails at once: a failed exit, restarted on failure with a growing
    // delay; without a policy the container ends in the error state.
    let mut req = request("crash", &["sh", "-c", "exit 3"], RestartPolicy::OnFailure);
    req.start = true;
    c.create(&req)
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    let looping = d.wait_for("crash", "two restarts", |i| i.restarts >= 2);
    assert_eq!(looping.last_exit.as_deref(), Some("exit 3"), "{looping:?}");
    // A supervised restart in flight answers 409 (busy): retry, as a client would.
    let deadline = Instant::now() + Duration::from_secs(15);
    while let Err(e) = c.delete("crash", true) {
        assert!(
            e.to_string().contains("busy") && Instant::now() < deadline,
            "{e}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    c.create(&request("once", &["sh", "-c", "exit 3"], RestartPolicy::No))
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    let failed = d.wait_for("once", "the error state", |i| {
        i.status == InstanceStatus::Error
    });
    assert_eq!(
        (failed.last_exit.as_deref(), failed.restarts),
        (Some("exit 3"), 0)
    );
    c.delete("once", false).unwrap();
}

#[test]
fn killed_daemon_leaves_containers_running_and_reattaches() {
    let mut d = TestDaemon::start();
    import_busybox(&d);
    let inst = launch(
        &d,
        &request(
            "keep",
            &["sh", "-c", &format!("echo keep-console; {IDLE}")],
            RestartPolicy::No,
        ),
    );
    let pid = inst.pid.unwrap();
    assert_eq!(exec(&d, "keep", "echo one > /f").exit_code, 0);
    // The container's first process, from the container runtime's state file.
    let state = d.dir.path().join("run/containers/keep/state.json");
    let init_pid = || -> i64 {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
        v["pid"].as_i64().unwrap()
    };
    let init = init_pid();
    d.kill9();
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(pid), "monitor died with the daemon");
    assert!(alive(init as i32), "container died with the daemon");
    d.spawn();
    let back = d.client().get("keep").unwrap();
    assert_eq!(
        (back.status, back.pid),
        (InstanceStatus::Running, Some(pid))
    );
    assert_eq!(init_pid(), init, "the container was replaced");
    assert_eq!(exec(&d, "keep", "cat /f").stdout, "one\n");
    // The console, held by the monitor, still answers.
    let mut con = UnixStream::connect(back.console.as_deref().unwrap()).unwrap();
    console_until(&mut con, "keep-console");
    let mut reattached = false;
    d.client()
        .events(0, false, |e| {
            reattached |= e.kind == "instance-reattached";
            true
        })
        .unwrap();
    assert!(reattached, "no instance-reattached event\n{}", d.log());
    // The re-attached monitor is still supervised: a stop goes through it.
    let stopped = d.client().stop("keep", false).unwrap();
    assert_eq!(stopped.status, InstanceStatus::Stopped);
    assert!(!alive(pid));
    d.client().delete("keep", false).unwrap();
}

#[test]
fn httpd_in_a_container_is_reachable_over_the_bridge() {
    // The daemon (and its bridge, dnsmasq, containers) in a private network namespace.
    let d = TestDaemon::start_with(vec!["unshare".into(), "-n".into()]);
    import_busybox(&d);
    let c = d.client();
    c.create_network(&CreateNetwork {
        name: "ct".into(),
        address: "10.78.0.1/24".into(),
        nat: false,
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    let mut web = request(
        "web",
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 80 -h /www",
        ],
        RestartPolicy::No,
    );
    web.networks = vec!["ct".into()];
    let web = launch(&d, &web);
    let mut cli = request("cli", &["sh", "-c", IDLE], RestartPolicy::No);
    cli.networks = vec!["ct".into()];
    let cli = launch(&d, &cli);
    let web_addr = web.address.clone().unwrap();
    assert_eq!(web_addr, "10.78.0.254/24");
    assert_eq!(cli.address.as_deref(), Some("10.78.0.253/24"));
    let ip = web_addr.split('/').next().unwrap();

    // From the other container, over the bridge.
    let fetch =
        format!("for i in $(seq 50); do wget -qO- http://{ip}/ && exit 0; sleep 0.1; done; exit 1");
    let r = exec(&d, "cli", &fetch);
    assert_eq!(
        (r.exit_code, r.stdout.as_str()),
        (0, "hello-from-web\n"),
        "{r:?}"
    );
    let r = exec(&d, "cli", "ip -4 addr show eth0; ip route");
    assert!(r.stdout.contains("10.78.0.253/24"), "{r:?}");
    assert!(r.stdout.contains("default via 10.78.0.1"), "{r:?}");

    // From the host side of the bridge (the daemon's namespace), where VMs' TAPs are too.
    let busybox = busybox_rootfs().join("bin/busybox");
    let out = Command::new("nsenter")
        .args(["-t", &d.daemon_pid().to_string(), "-n"])
        .arg(&busybox)
        .args(["wget", "-qO-", &format!("http://{ip}/")])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello-from-web\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A stand-in for a VM: a namespace on the same bridge through a veth (as a VM's TAP),
    // configured by the daemon's dnsmasq over DHCP. It reaches the container's httpd, and the
    // container reaches an httpd on it.
    let vm = FakeVm::new(&d, &busybox);
    let out = vm.run(&["wget", "-qO-", &format!("http://{ip}/")]);
    assert_eq!(out, "hello-from-web\n");
    let r = exec(
        &d,
        "cli",
        &format!(
            "for i in $(seq 50); do wget -qO- http://{}:8080/ && exit 0; sleep 0.1; done; exit 1",
            vm.ip
        ),
    );
    assert_eq!(
        (r.exit_code, r.stdout.as_str()),
        (0, "hello-from-vm\n"),
        "{r:?}"
    );

    // Names: each container is NAME and NAME.kapsel in the bridge's dnsmasq, for the VM and
    // for the other containers (whose resolv.conf points at the bridge).
    for name in ["web", "web.kapsel"] {
        assert_eq!(vm.lookup(name).as_deref(), Some(ip), "{name}");
    }
    assert_eq!(vm.lookup("cli.kapsel").as_deref(), Some("10.78.0.253"));
    let r = exec(
        &d,
        "cli",
        "cat /etc/resolv.conf; nslookup web; wget -qO- http://web/",
    );
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert!(
        r.stdout
            .starts_with("nameserver 10.78.0.1\nsearch kapsel\n"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains(ip) && r.stdout.ends_with("hello-from-web\n"),
        "{r:?}"
    );
    // dnsmasq restarted by the daemon's supervisor (as after a crash or a host reboot) finds
    // the names again in the network's state directory.
    let pid_file = d.dir.path().join("state/networks/ct/dnsmasq.pid");
    let old: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: signalling the dnsmasq this test's daemon started.
    unsafe { libc::kill(old, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let new = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        if new.is_some_and(|p| p != old && alive(p)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dnsmasq not restarted:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while vm.lookup("web").as_deref() != Some(ip) {
        assert!(Instant::now() < deadline, "web unknown to the new dnsmasq");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The container's NIC counters come from its veth.
    let m = c.metrics().unwrap();
    let sent = m
        .lines()
        .find(|l| {
            l.starts_with(
                "kapsel_instance_network_bytes_total{name=\"web\",nic=\"0\",network=\"ct\",direction=\"tx\"}",
            )
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no NIC counter for web:\n{m}"));
    assert!(sent > 0, "web sent nothing: {m}");

    // A deleted container's name goes (dnsmasq rereads its files on the SIGHUP the delete
    // sends); the other container's stays, and so does the path to dnsmasq: the bridge keeps
    // its address when a port goes (it would otherwise take another port's MAC, and the
    // guests' ARP entry for the gateway would point nowhere for a while).
    let bridge_mac = || {
        let out = Command::new("nsenter")
            .args(["-t", &d.daemon_pid().to_string(), "-n"])
            .args(["ip", "-o", "link", "show", "kapsel-ct"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap_or_else(|| panic!("no bridge MAC in {text:?}"))
            .to_string()
    };
    let mac_before = bridge_mac();
    c.delete("web", true).unwrap();
    assert_eq!(bridge_mac(), mac_before, "the bridge's MAC changed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while vm.lookup("web").is_some() {
        assert!(Instant::now() < deadline, "web still resolves after delete");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(vm.lookup("cli").as_deref(), Some("10.78.0.253"));
    drop(vm);
    c.delete("cli", true).unwrap();
    c.delete_network("ct").unwrap();
}

/// A network namespace with a veth into the `ct` network's bridge, its address from DHCP,
/// serving `hello-from-vm` on port 8080. Removed on drop.
struct FakeVm {
    ns: String,
    busybox: PathBuf,
    ip: String,
    httpd: std::process::Child,
    _www: tempfile::TempDir,
}

impl FakeVm {
    fn new(d: &TestDaemon, busybox: &Path) -> Self {
        let ns = format!("kapsel-ctvm{}", std::process::id());
        let sh = |cmd: &str| {
            let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
            assert!(
                out.status.success(),
                "{cmd}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let in_daemon = format!("nsenter -t {} -n", d.daemon_pid());
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        sh(&format!("ip netns add {ns}"));
        let www = tempfile::tempdir().unwrap();
        std::fs::write(www.path().join("index.html"), "hello-from-vm\n").unwrap();
        let script = www.path().join("udhcpc.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\n[ \"$1\" = bound ] && ip addr add \"$ip/$mask\" dev \"$interface\"\nexit 0\n",
        )
        .unwrap();
        sh(&format!("chmod +x {}", script.display()));
        let bb = busybox.display();
        sh(&format!(
            "{in_daemon} ip link add kapsel-vmh type veth peer name kapsel-vmg"
        ));
        sh(&format!("{in_daemon} ip link set kapsel-vmg netns {ns}"));
        sh(&format!(
            "{in_daemon} ip link set kapsel-vmh master kapsel-ct up"
        ));
        sh(&format!("ip netns exec {ns} ip link set kapsel-vmg up"));
        sh(&format!(
            "ip netns exec {ns} {bb} udhcpc -i kapsel-vmg -n -q -t 10 -T 1 -s {}",
            script.display()
        ));
        let a = sh(&format!("ip netns exec {ns} ip -4 -o addr show kapsel-vmg"));
        let ip = a
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|w| w.split('/').next())
            .unwrap_or_else(|| panic!("no DHCP address: {a}"))
            .to_string();
        assert!(ip.starts_with("10.78.0."), "{a}");
        let httpd = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(busybox)
            .args(["httpd", "-f", "-p", "8080", "-h"])
            .arg(www.path())
            .spawn()
            .unwrap();
        FakeVm {
            ns,
            busybox: busybox.to_path_buf(),
            ip,
            httpd,
            _www: www,
        }
    }

    /// The address `name` has in the bridge's dnsmasq, as this namespace's `nslookup` sees
    /// it (its exit code also counts the AAAA answer, which a container does not have).
    fn lookup(&self, name: &str) -> Option<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(&self.busybox)
            .args(["nslookup", "-type=a", name, "10.78.0.1"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .rfind(|l| l.starts_with("Address"))
            .and_then(|l| l.split_whitespace().next_back())
            .filter(|a| !a.ends_with(":53"))
            .map(str::to_string)
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(&self.busybox)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for FakeVm {
    fn drop(&mut self) {
        let _ = self.httpd.kill();
        let _ = self.httpd.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

fn kapsel(d: &TestDaemon, args: &[&str]) -> (i32, String, String) {
    let o = Command::new(common::kapsel_bin())
        .args(args)
        .env("KAPSEL_SOCKET", &d.socket)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    outcome(&o)
}

/// Exit code (-1 for a signal), stdout and stderr of a finished `kapsel`.
fn outcome(o: &std::process::Output) -> (i32, String, String) {
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn cli_verbs_drive_containers() {
    let d = TestDaemon::start();
    let rootfs = busybox_rootfs().display().to_string();
    let (code, _, err) = kapsel(&d, &["image", "import", "bb", "--rootfs", &rootfs]);
    assert_eq!(code, 0, "{err}");
    // A container image is refused as a VM and a VM image as a container, in one line.
    let (code, _, err) = kapsel(&d, &["launch", "--container", "tg", "nope"]);
    assert_eq!((code, err.lines().count()), (1, 1), "{err}");
    assert!(err.contains("not a container image"), "{err}");
    let (code, out, err) = kapsel(
        &d,
        &[
            "launch",
            "--container",
            "bb",
            "cli-c",
            "--memory",
            "128M",
            "--pids",
            "50",
            "--restart",
            "on-failure",
            "--",
            "sh",
            "-c",
            IDLE,
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "cli-c running");
    let (_, out, _) = kapsel(&d, &["list"]);
    assert!(out.split_whitespace().take(2).eq(["NAME", "TYPE"]), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("cli-c") && l.contains("container") && l.contains("running")),
        "{out}"
    );
    // exec: output on stdout and stderr, the command's exit code as ours.
    let (code, out, err) = kapsel(
        &d,
        &[
            "exec",
            "cli-c",
            "--",
            "sh",
            "-c",
            "echo hi; echo e >&2; exit 7",
        ],
    );
    assert_eq!((code, out.as_str(), err.as_str()), (7, "hi\n", "e\n"));
    let (code, out, err) = kapsel(&d, &["exec", "-t", "cli-c", "--", "tty"]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.starts_with("/dev/pts/"), "{out}");
    let (code, _, err) = kapsel(&d, &["config", "set", "cli-c", "pids=20", "memory=96M"]);
    assert_eq!(code, 0, "{err}");
    let pids_max = d.cgroup_dir("pids", "cli-c").join("pids.max");
    if pids_max.exists() {
        assert_eq!(std::fs::read_to_string(&pids_max).unwrap().trim(), "20");
    }
    let (code, _, err) = kapsel(&d, &["snapshot", "create", "cli-c", "s1"]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = kapsel(&d, &["snapshot", "list", "cli-c"]);
    assert!(out.contains("s1"), "{out}");
    let (code, _, err) = kapsel(&d, &["exec", "nosuch", "--", "true"]);
    assert_eq!((code, err.lines().count()), (6, 1), "{err}");
    let (code, _, err) = kapsel(&d, &["delete", "cli-c"]);
    assert_eq!(code, 7, "{err}");
    let (code, _, err) = kapsel(&d, &["delete", "--force", "cli-c"]);
    assert_eq!(code, 0, "{err}");

    // A tarball image is unpacked into the pool.
    let tar = d.dir.path().join("bb.tar.gz");
    let st = Command::new("tar")
        .arg("-czf")
        .arg(&tar)
        .arg("-C")
        .arg(busybox_rootfs())
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let tar = tar.display().to_string();
    let (code, _, err) = kapsel(&d, &["image", "import", "bbtar", "--rootfs", &tar]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = kapsel(
        &d,
        &[
            "launch",
            "--container",
            "bbtar",
            "from-tar",
            "--",
            "sh",
            "-c",
            IDLE,
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = kapsel(&d, &["exec", "from-tar", "--", "cat", "/etc/issue"]);
    assert_eq!((code, out.as_str()), (0, "kapsel busybox rootfs\n"));
    // Not a root filesystem, and a directory holding the daemon's state: one-line 400s.
    let (code, _, err) = kapsel(&d, &["image", "import", "bad", "--rootfs", "/"]);
    assert_eq!((code, err.lines().count()), (1, 1), "{err}");
    let (code, _, err) = kapsel(&d, &["delete", "--force", "from-tar"]);
    assert_eq!(code, 0, "{err}");
}

/// Many execs in a row: each must come back (the exec handshake once lost a race to a fast
/// process about 1 time in 150 on a loaded host).
#[test]
fn exec_many_times() {
    let d = TestDaemon::start();
    import_busybox(&d);
    launch(&d, &request("st", &["sh", "-c", IDLE], RestartPolicy::No));
    let mut fails = Vec::new();
    for i in 0..150 {
        let r = d.client().exec("st", &exec_request(&["true"]));
        if let Err(e) = r {
            fails.push((i, e.to_string()));
        }
    }
    assert!(fails.is_empty(), "{} fails: {fails:?}", fails.len());
}

/// `kapsel ARGS` with `input` on its stdin (a pipe).
fn kapsel_with_input(d: &TestDaemon, args: &[&str], input: &str) -> (i32, String, String) {
    let mut child = Command::new(common::kapsel_bin())
        .args(args)
        .env("KAPSEL_SOCKET", &d.socket)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    outcome(&o)
}

/// `kapsel exec -t`: the command on a pty of the container's devpts as its controlling
/// terminal, piped input typed on it (end of input is the terminal's end of file), output
/// streamed back, the command's exit code as kapsel's; a client that goes away hangs the
/// command up.
#[test]
fn interactive_exec_on_a_terminal() {
    let d = TestDaemon::start();
    import_busybox(&d);
    launch(&d, &request("it", &["sh", "-c", IDLE], RestartPolicy::No));

    let (code, out, err) = kapsel_with_input(
        &d,
        &["exec", "-t", "it", "--", "sh"],
        "echo hi-$((40+2)); exit 3\n",
    );
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("hi-42"), "{out}");

    let (code, out, err) = kapsel_with_input(&d, &["exec", "-t", "it", "--", "tty"], "");
    assert_eq!(code, 0, "{out}{err}");
    let tty = out.trim();
    assert!(
        tty.strip_prefix("/dev/pts/")
            .is_some_and(|n| n.parse::<u32>().is_ok()),
        "{out:?}"
    );
    // A process group of its own with the terminal as controlling terminal: `ps`-free check
    // through /proc: the session leader is the shell itself, and the terminal is its ctty.
    let (code, out, err) = kapsel_with_input(
        &d,
        &[
            "exec",
            "-t",
            "it",
            "--",
            "sh",
            "-c",
            "set -- $(cat /proc/$$/stat); [ $6 = $$ ] && [ $7 != 0 ] && echo ctty-ok",
        ],
        "",
    );
    assert_eq!((code, out.contains("ctty-ok")), (0, true), "{out}{err}");

    // End of input ends `cat`, also after a last line without a newline.
    let (code, out, err) =
        kapsel_with_input(&d, &["exec", "-t", "it", "--", "cat"], "line-1\nline-2");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("line-1") && out.contains("line-2"), "{out:?}");
    let (code, _, err) = kapsel_with_input(
        &d,
        &["exec", "-t", "it", "--", "sh", "-c", "kill -9 $$"],
        "",
    );
    assert_eq!(code, 137, "{err}");
    // Errors before the command runs are one line, with the usual exit codes.
    let (code, _, err) = kapsel_with_input(&d, &["exec", "-t", "nope", "--", "true"], "");
    assert_eq!((code, err.lines().count()), (6, 1), "{err}");
    let (code, _, err) = kapsel_with_input(&d, &["exec", "-t", "it", "--", "/no/such"], "");
    assert_ne!(code, 0, "{err}");

    // The size a request names is the terminal's from the start; a zero size is refused.
    let mut sized = ExecRequest {
        tty: true,
        size: Some(TermSize {
            rows: 30,
            cols: 100,
        }),
        ..exec_request(&["stty", "size"])
    };
    let r = d.client().exec("it", &sized).unwrap();
    assert_eq!((r.exit_code, r.stdout.trim()), (0, "30 100"), "{r:?}");
    sized.size = Some(TermSize { rows: 0, cols: 100 });
    match d.client().exec("it", &sized) {
        Err(client::ClientError::Status { status: 400, .. }) => {}
        other => panic!("{other:?}"),
    }

    // The frames through the API: the window size reaches the terminal, output streams, the
    // exit code ends the session.
    let req = ExecRequest {
        tty: true,
        interactive: true,
        ..exec_request(&["sh", "-c", "read x; stty size; exit 4"])
    };
    let mut s = d.client().exec_interactive("it", &req).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&Frame::Resize { rows: 33, cols: 99 }.encode())
        .unwrap();
    s.write_all(&Frame::Stdin(b"go\n".to_vec()).encode())
        .unwrap();
    let mut out = Vec::new();
    let code = loop {
        match Frame::read(&mut s).unwrap() {
            Some(Frame::Output(b)) => out.extend(b),
            Some(Frame::Exit(c)) => break c,
            other => panic!("{other:?} after {}", String::from_utf8_lossy(&out)),
        }
    };
    let out = String::from_utf8_lossy(&out);
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("33 99"), "{out:?}");
    // Without tty, or with a daemon's frame from the client: refused, or hung up.
    let no_tty = ExecRequest {
        tty: false,
        ..req.clone()
    };
    let e = d.client().exec_interactive("it", &no_tty).unwrap_err();
    assert!(e.to_string().contains("tty"), "{e}");
    let mut s = d
        .client()
        .exec_interactive(
            "it",
            &ExecRequest {
                command: vec!["sleep".into(), "30".into()],
                ..req
            },
        )
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&Frame::Exit(0).encode()).unwrap();
    // The daemon hangs the command up and closes the connection, with no exit code for a
    // client that broke the protocol.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)
        .expect("the daemon closes the connection");
    let mut r = rest.as_slice();
    while let Ok(Some(f)) = Frame::read(&mut r) {
        assert!(matches!(f, Frame::Output(_)), "{f:?}");
    }

    // The client goes away: the command gets SIGHUP and is gone.
    let mut client = Command::new(common::kapsel_bin())
        .args([
            "exec",
            "-t",
            "it",
            "--",
            "sh",
            "-c",
            "sleep 31337; echo never",
        ])
        .env("KAPSEL_SOCKET", &d.socket)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let sleeping = |d: &TestDaemon| {
        // (the pattern does not match its own command line)
        exec(
            d,
            "it",
            "grep -l '3133[7]' /proc/[0-9]*/cmdline 2>/dev/null | wc -l",
        )
        .stdout
        .trim()
        .parse::<u32>()
        .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while sleeping(&d) == 0 {
        assert!(Instant::now() < deadline, "the exec'd sleep never started");
        assert!(
            client.try_wait().unwrap().is_none(),
            "the client ended early"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    client.kill().unwrap();
    client.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while sleeping(&d) > 0 {
        assert!(
            Instant::now() < deadline,
            "the hung-up command is still running:\n{}\n{}",
            exec(&d, "it", "ps -o pid,ppid,pgid,stat,args").stdout,
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    d.client().delete("it", true).unwrap();
}

/// `kapsel exec -t` on a real terminal (a host pty whose session the client leads): raw
/// mode, so Ctrl-C reaches the command as SIGINT through the container's terminal; the
/// window size at the start and after a change (SIGWINCH) reaches the container's terminal;
/// the terminal is restored when the command ends.
#[test]
fn interactive_exec_from_a_terminal() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;

    let d = TestDaemon::start();
    import_busybox(&d);
    launch(&d, &request("term", &["sh", "-c", IDLE], RestartPolicy::No));
    let pty = container::console::open_pty(Some((40, 120))).unwrap();
    let slave = pty.slave.as_raw_fd();
    let stdio = || std::process::Stdio::from(pty.slave.try_clone().unwrap());
    let mut cmd = Command::new(common::kapsel_bin());
    cmd.args([
        "exec",
        "-t",
        "term",
        "--",
        "sh",
        "-c",
        "stty size; while read x; do [ \"$x\" = cat ] && exec cat; stty size; done",
    ])
    .env("KAPSEL_SOCKET", &d.socket)
    .stdin(stdio())
    .stdout(stdio())
    .stderr(stdio());
    // SAFETY: setsid and TIOCSCTTY in the child before exec: the pty becomes its controlling
    // terminal, so it gets SIGWINCH when the size changes.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut client = cmd.spawn().unwrap();
    let master = pty.master.as_raw_fd();
    // What the client wrote to its terminal within 200 ms.
    let read_some = || {
        let mut pfd = libc::pollfd {
            fd: master,
            events: libc::POLLIN,
            revents: 0,
        };
        let mut buf = [0u8; 4096];
        // SAFETY: polling one valid pollfd, then reading into a local buffer.
        let n = unsafe {
            if libc::poll(&mut pfd, 1, 200) <= 0 {
                return String::new();
            }
            libc::read(master, buf.as_mut_ptr().cast(), buf.len())
        };
        String::from_utf8_lossy(&buf[..n.max(0) as usize]).into_owned()
    };
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.contains("40 120") {
        assert!(
            Instant::now() < deadline,
            "no size in {seen:?}\n{}",
            d.log()
        );
        seen.push_str(&read_some());
    }
    // SAFETY: tcgetattr into a local termios on our pty's slave.
    let lflag = |fd| unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        libc::tcgetattr(fd, &mut t);
        t.c_lflag
    };
    assert_eq!(
        lflag(slave) & libc::ICANON,
        0,
        "the client's terminal is not raw"
    );
    let ws = libc::winsize {
        ws_row: 50,
        ws_col: 140,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a local winsize; the kernel signals the client's group.
    unsafe { libc::ioctl(master, libc::TIOCSWINSZ, &ws) };
    // The new size travels as its own frame; ask again until it has arrived.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.contains("50 140") {
        assert!(
            Instant::now() < deadline,
            "new size never arrived: {seen:?}"
        );
        // SAFETY: writing one byte from a static buffer to our pty master.
        unsafe { libc::write(master, b"\r".as_ptr().cast(), 1) };
        seen.push_str(&read_some());
    }
    // Ctrl-C: a raw client passes it on, the container's terminal makes it SIGINT. `cat` gets
    // it (a shell run with -c catches SIGINT and decides for itself); it runs once a line
    // shows twice, echoed by the terminal and copied by cat.
    // SAFETY: writing from a static buffer to our pty master.
    unsafe { libc::write(master, b"cat\r".as_ptr().cast(), 4) };
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in 0.. {
        assert!(Instant::now() < deadline, "cat never ran: {seen:?}");
        let line = format!("ping{n}\r");
        // SAFETY: writing from a live buffer to our pty master.
        unsafe { libc::write(master, line.as_ptr().cast(), line.len()) };
        let twice = format!("ping{n}\r\nping{n}\r\n");
        let until = Instant::now() + Duration::from_secs(2);
        while !seen.contains(&twice) && Instant::now() < until {
            seen.push_str(&read_some());
        }
        if seen.contains(&twice) {
            break;
        }
    }
    // SAFETY: as above.
    unsafe { libc::write(master, b"\x03".as_ptr().cast(), 1) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = client.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "Ctrl-C did not end the command: {seen:?}\n{}\n{}",
            exec(&d, "term", "ps -o pid,ppid,pgid,stat,args; for p in /proc/[0-9]*; do echo $p $(grep -E 'SigIgn|SigCgt|SigBlk' $p/status | tr -d '\\t'); done").stdout,
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(128 + libc::SIGINT), "{seen:?}");
    assert_ne!(
        lflag(slave) & libc::ICANON,
        0,
        "the client left its terminal raw"
    );
    d.client().delete("term", true).unwrap();
}

/// A daemon in a chroot (here: a recursive bind of `/`, in a private mount namespace that
/// goes with it): `exec` must still run in the container's root. Joining the container's
/// mount namespace alone started the process in the host's `/`, whose files it then saw.
#[test]
fn exec_from_a_daemon_in_a_chroot_runs_in_the_container() {
    let root = tempfile::Builder::new()
        .prefix("kchroot")
        .tempdir_in("/tmp")
        .unwrap();
    let script = format!(
        "mount --rbind / {r} && exec chroot {r} \"$@\"",
        r = root.path().display()
    );
    let d = TestDaemon::start_with(
        ["unshare", "-m", "sh", "-c", &script, "sh"]
            .map(String::from)
            .to_vec(),
    );
    import_busybox(&d);
    launch(&d, &request("cr", &["sh", "-c", IDLE], RestartPolicy::No));
    let r = exec(&d, "cr", "cat /etc/issue; ls /");
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert!(
        r.stdout.starts_with("kapsel busybox rootfs\n") && !r.stdout.contains("home"),
        "{r:?}"
    );
    let (code, out, err) =
        kapsel_with_input(&d, &["exec", "-t", "cr", "--", "cat", "/etc/issue"], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("kapsel busybox rootfs"), "{out:?}");
    d.client().delete("cr", true).unwrap();
}
