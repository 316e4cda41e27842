//! Container operations that differ from a VM's: the monitor's command and spec, exec,
//! pause/resume through the cgroup freezer, snapshots of the writable layer, live limits,
//! copying the layer, and clearing up after a monitor that died.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use api::daemon::{
    ExecRequest, ExecResult, Instance, InstanceConfig, InstanceKind, InstanceStatus, Snapshot,
    TermSize,
};
use container::{Container, ProcessConfig, Stdio};

use crate::container::spec::MonitorSpec;
use crate::container::{monitor, net};
use crate::db::now;
use crate::error::{DaemonError, Result};
use crate::names::{check_name, MAX_NAME};
use crate::state::Daemon;

/// Output kept per stream of an exec.
const MAX_OUTPUT: usize = 1 << 20;
/// Default and longest exec run time.
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_EXEC_TIMEOUT: u64 = 3600;

/// True when `name` is a container instance.
pub fn is_container(d: &Daemon, name: &str) -> Result<bool> {
    Ok(d.db().instance(name)?.0.kind == InstanceKind::Container)
}

/// Checks a container's configuration beyond the common checks.
pub fn check_config(c: &InstanceConfig) -> Result<()> {
    if c.networks.len() > 1 {
        return Err(DaemonError::BadRequest(
            "a container has at most one network".into(),
        ));
    }
    if c.command.len() > 256 || c.command.iter().any(|a| a.len() > 4096 || a.contains('\0')) {
        return Err(DaemonError::BadRequest(
            "command must be at most 256 arguments of at most 4096 bytes, without NUL".into(),
        ));
    }
    if c.pids_limit == Some(0) {
        return Err(DaemonError::BadRequest(
            "pids_limit must be at least 1".into(),
        ));
    }
    Ok(())
}

/// Writes the monitor's spec for `inst` and returns the monitor's arguments.
pub fn monitor_args(d: &Daemon, inst: &Instance, rootfs: &str) -> Result<Vec<String>> {
    let cfg = &d.config;
    let net = match (inst.config.networks.first(), &inst.address) {
        (Some(n), Some(a)) => Some(net::spec(d, &inst.name, n, a)?),
        _ => None,
    };
    let spec = MonitorSpec {
        name: inst.name.clone(),
        rootfs: rootfs.into(),
        layer: cfg.container_layer(&inst.name),
        state_root: cfg.container_state_root(),
        cgroup: cfg.container_cgroup(&inst.name),
        config: inst.config.clone(),
        host_cpus: d.host_cpus,
        console: cfg.console_socket(&inst.name),
        // The monitor's own SIGKILL comes before the daemon's patience with the monitor ends.
        stop_timeout_ms: (cfg.stop_timeout.as_millis() * 3 / 4) as u64,
        net,
    };
    let path = cfg.monitor_spec(&inst.name);
    spec.save(&path)?;
    Ok(vec!["container-monitor".into(), path.display().to_string()])
}

/// Kills and removes a container whose monitor ended without doing so (killed), and its
/// veth. Harmless when there is nothing left.
pub fn clean_up(d: &Daemon, name: &str) {
    monitor::remove_leftover(&d.config.container_state_root(), name);
    net::detach(&net::host_if(name));
}

pub(crate) fn require_running(d: &Daemon, name: &str, what: &str) -> Result<Instance> {
    let (inst, _) = d.db().instance(name)?;
    if inst.kind != InstanceKind::Container {
        return Err(DaemonError::BadRequest(format!(
            "instance '{name}' is a VM: {what} works on containers only"
        )));
    }
    if !d.procs().contains_key(name) || inst.status != InstanceStatus::Running {
        return Err(DaemonError::Conflict(format!(
            "cannot {what} in instance '{name}': it is {}",
            inst.status.as_str()
        )));
    }
    Ok(inst)
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    container::process::pipe().map_err(DaemonError::from)
}

fn collect(fd: OwnedFd) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(fd);
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 {
                break;
            }
            let room = MAX_OUTPUT.saturating_sub(out.len());
            out.extend_from_slice(&buf[..n.min(room)]);
        }
        out
    })
}

/// Waits for our child `pid` until `deadline`, then kills it; returns its exit code.
pub(crate) fn wait_child(pid: i32, deadline: Instant) -> i32 {
    let mut status = 0;
    let mut killed = false;
    loop {
        // SAFETY: waiting for our own child into a local status.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG | libc::__WALL) };
        if r == pid {
            break;
        }
        if r < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return 255;
        }
        if !killed && Instant::now() > deadline {
            let _ = crate::process::kill(pid, libc::SIGKILL);
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    }
}

/// Checks an exec's command: a non-empty list of arguments without NUL.
pub(crate) fn check_command(req: &ExecRequest) -> Result<()> {
    if req.command.is_empty() || req.command.iter().any(|a| a.contains('\0')) {
        return Err(DaemonError::BadRequest(
            "command must be a non-empty list of arguments without NUL".into(),
        ));
    }
    Ok(())
}

/// An exec's time limit: `timeout_secs`, 60 s when not given.
pub(crate) fn exec_timeout(req: &ExecRequest) -> Result<Duration> {
    match req.timeout_secs {
        None => Ok(EXEC_TIMEOUT),
        Some(s) if (1..=MAX_EXEC_TIMEOUT).contains(&s) => Ok(Duration::from_secs(s)),
        Some(s) => Err(DaemonError::BadRequest(format!(
            "timeout_secs must be 1 to {MAX_EXEC_TIMEOUT}, not {s}"
        ))),
    }
}

/// Runs a command in a running container and returns its output and exit code.
pub fn exec(d: &Daemon, name: &str, req: &ExecRequest) -> Result<ExecResult> {
    check_command(req)?;
    let timeout = exec_timeout(req)?;
    require_running(d, name, "exec")?;
    let c = Container::load(&d.config.container_state_root(), name)?;
    let process = ProcessConfig::new(req.command.clone());
    let devnull =
        std::fs::File::open("/dev/null").map_err(|e| DaemonError::io("open", "/dev/null", e))?;
    let (pid, out_r, err_r) = if req.tty {
        let pty = container_pty(c.pid(), req.size)?;
        let pid = c.exec_on_terminal(&process, pty.slave.as_raw_fd())?;
        drop(pty.slave);
        // No input: end-of-file (Ctrl-D) for a command that reads its terminal.
        // SAFETY: writing one byte from a local buffer to our pty master.
        unsafe { libc::write(pty.master.as_raw_fd(), b"\x04".as_ptr().cast(), 1) };
        (pid, pty.master, None)
    } else {
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let stdio = Stdio {
            stdin: Some(devnull.as_raw_fd()),
            stdout: Some(out_w.as_raw_fd()),
            stderr: Some(err_w.as_raw_fd()),
        };
        let pid = c.exec(&process, stdio)?;
        (pid, out_r, Some(err_r))
    };
    let out = collect(out_r);
    let err = err_r.map(collect);
    let code = wait_child(pid, Instant::now() + timeout);
    // A pty reads EIO once the last process holding it is gone; pipes read EOF.
    let stdout = out.join().unwrap_or_default();
    let stderr = err
        .map(|h| h.join().unwrap_or_default())
        .unwrap_or_default();
    d.event(
        "instance-exec",
        Some(name),
        &format!("{} → exit {code}", req.command[0]),
    );
    Ok(ExecResult {
        exit_code: code,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

/// A pty from the container's own devpts (its `/dev/ptmx`), so the terminal has a name
/// inside the container (`tty`, `ttyname`) as on the container's console.
pub(crate) struct ContainerPty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

pub(crate) fn container_pty(pid: i32, size: Option<TermSize>) -> Result<ContainerPty> {
    let size = size.unwrap_or(TermSize { rows: 24, cols: 80 });
    if size.rows == 0 || size.cols == 0 {
        return Err(DaemonError::BadRequest(format!(
            "size must be at least 1 row and 1 column, not {}x{}",
            size.rows, size.cols
        )));
    }
    let ptmx = format!("/proc/{pid}/root/dev/ptmx");
    let master = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&ptmx)
        .map_err(|e| DaemonError::io("open", &ptmx, e))?;
    let master = OwnedFd::from(master);
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int from a valid pointer; TIOCGPTPEER opens the peer of our
    // own master and returns a new fd (or -1); TIOCSWINSZ reads a local winsize.
    let slave = unsafe {
        libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock);
        let ws = libc::winsize {
            ws_row: size.rows,
            ws_col: size.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(DaemonError::io(
            "open the terminal peer of",
            &ptmx,
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: the kernel just returned this fd; nothing else owns it.
    let slave = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(slave) };
    Ok(ContainerPty { master, slave })
}

/// Freezes (`true`) or thaws a running container's processes.
pub fn pause(d: &Daemon, name: &str, pause: bool) -> Result<()> {
    d.cgroups.set_frozen(name, pause)
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg("--")
        .arg(from)
        .arg(to)
        .output()
        .map_err(|e| DaemonError::io("run cp for", to, e))?;
    if !out.status.success() {
        return Err(DaemonError::io(
            "copy to",
            to,
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        ));
    }
    Ok(())
}

/// Copies the container's upper directory to `dest/upper`, frozen while it runs.
fn copy_upper(d: &Daemon, name: &str, dest: &Path, live: bool) -> Result<()> {
    std::fs::create_dir_all(dest).map_err(|e| DaemonError::io("create", dest, e))?;
    let upper = d.config.container_layer(name).join("upper");
    if !upper.exists() {
        std::fs::create_dir_all(dest.join("upper"))
            .map_err(|e| DaemonError::io("create", dest, e))?;
        return Ok(());
    }
    if live {
        d.cgroups.set_frozen(name, true)?;
    }
    let copied = copy_tree(&upper, &dest.join("upper"));
    if live {
        d.cgroups.set_frozen(name, false)?;
    }
    copied
}

/// Snapshots a container: a copy of its writable layer, taken while it is frozen.
pub fn snapshot_create(d: &Daemon, name: &str, snap: &str) -> Result<Snapshot> {
    check_name("snapshot", snap, MAX_NAME)?;
    let _guard = d.claim(name, "snapshot")?;
    let (inst, _) = d.db().instance(name)?;
    let live = d.procs().contains_key(name) && inst.status == InstanceStatus::Running;
    let created_at = now();
    let stored = crate::db::StoredSnapshot {
        name: snap.to_string(),
        created_at,
        stateful: false,
        layer: None,
        complete: true,
    };
    d.db().insert_snapshot(name, &stored)?;
    let dir = d.config.snapshot_dir(name, snap);
    if let Err(e) = copy_upper(d, name, &dir, live) {
        let _ = d.db().delete_snapshot(name, snap);
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    d.event("snapshot-created", Some(name), snap);
    Ok(Snapshot {
        instance: name.to_string(),
        name: snap.to_string(),
        created_at,
        path: dir.display().to_string(),
        stateful: false,
        disk_layer: None,
    })
}

/// Puts a snapshot's writable layer back; the container must be stopped.
pub fn snapshot_restore(d: &Daemon, name: &str, snap: &str) -> Result<Instance> {
    let _guard = d.claim(name, "snapshot restore")?;
    let (inst, _) = d.db().instance(name)?;
    d.db().snapshot(name, snap)?;
    if d.procs().contains_key(name) {
        return Err(DaemonError::Conflict(format!(
            "container '{name}' is {}: stop it before restoring a snapshot",
            inst.status.as_str()
        )));
    }
    let layer = d.config.container_layer(name);
    let src = d.config.snapshot_dir(name, snap).join("upper");
    let staged = layer.join("upper.restoring");
    let _ = std::fs::remove_dir_all(&staged);
    std::fs::create_dir_all(&layer).map_err(|e| DaemonError::io("create", &layer, e))?;
    copy_tree(&src, &staged)?;
    for old in ["upper", "work"] {
        let p = layer.join(old);
        if p.exists() {
            std::fs::remove_dir_all(&p).map_err(|e| DaemonError::io("remove", &p, e))?;
        }
    }
    let upper = layer.join("upper");
    std::fs::rename(&staged, &upper).map_err(|e| DaemonError::io("rename", &upper, e))?;
    d.event("snapshot-restored", Some(name), snap);
    Ok(d.db().instance(name)?.0)
}

/// Copies the writable layer of container `from` to the new instance `to`.
pub fn copy_layer(d: &Daemon, from: &str, to: &str) -> Result<()> {
    let live = d.procs().contains_key(from);
    copy_upper(d, from, &d.config.container_layer(to), live)
}
