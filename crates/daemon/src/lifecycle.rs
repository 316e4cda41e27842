//! Starting and stopping one VMM process. Callers hold the instance's busy claim.
//!
//! A VMM runs as `kapsel run ...` in its own session (setsid), so neither a daemon crash nor
//! a signal to the daemon's process group reaches it. Its stdout/stderr go to `vmm.log` in
//! the instance directory; its serial console is a UNIX socket the VMM serves itself, so the
//! console outlives the daemon too. The instance counts as running once that socket exists.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use api::daemon::{Image, Instance, InstanceKind, InstanceStatus};

use crate::db::StoredProcess;
use crate::error::{DaemonError, Result};
use crate::state::{Daemon, Proc};
use crate::{netsetup, process};

/// How long a VMM gets to build its VM and open its console socket.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// A log larger than this is rotated to `vmm.log.1` at the next start.
const MAX_LOG: u64 = 1 << 20;

/// Why a start happens (for events and the restart counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartReason {
    User,
    Restart,
}

/// The `kapsel run` arguments for an instance of `image`.
pub fn vmm_args(inst: &Instance, image: &Image, console: &Path, api: &Path) -> Vec<String> {
    let mut args = vec!["run".to_string(), "--kernel".into(), image.kernel.clone()];
    if let Some(initrd) = &image.initrd {
        args.push("--initrd".into());
        args.push(initrd.clone());
    }
    let cmdline = match (image.cmdline.trim(), inst.config.cmdline.trim()) {
        (base, "") => base.to_string(),
        ("", extra) => extra.to_string(),
        (base, extra) => format!("{base} {extra}"),
    };
    args.extend([
        "--cmdline".into(),
        cmdline,
        "--cpus".into(),
        inst.config.cpus.to_string(),
        "--memory".into(),
        format!("{}M", inst.config.memory_mib),
        "--console".into(),
        format!("socket:{}", console.display()),
        "--api-socket".into(),
        api.display().to_string(),
    ]);
    for i in 0..inst.config.networks.len() {
        args.push("--net".into());
        args.push(format!(
            "tap={},mac={}",
            netsetup::tap_name(&inst.name, i),
            netsetup::mac(&inst.name, i)
        ));
    }
    if !inst.config.memory_backing.is_empty() {
        args.push("--memory-backing".into());
        args.push(inst.config.memory_backing.clone());
    }
    if inst.config.balloon_mib.is_some() {
        args.push("--balloon".into());
        args.push(String::new());
    }
    if let Some(disk) = &inst.disk {
        args.push("--disk".into());
        let format = crate::disks::format_of(std::path::Path::new(disk));
        args.push(format!("path={disk},format={format}"));
    }
    args
}

/// The `kapsel restore` arguments that resume snapshot `dir` as an instance: the snapshot
/// holds the VM's configuration (its TAPs and disks are the instance's own); the console and
/// API sockets are the ones the daemon serves for the instance now.
pub fn restore_args(dir: &Path, console: &Path, api: &Path) -> Vec<String> {
    vec![
        "restore".into(),
        dir.display().to_string(),
        "--console".into(),
        format!("socket:{}", console.display()),
        "--api-socket".into(),
        api.display().to_string(),
    ]
}

/// Creates the instance's TAPs on the bridges of its networks and names it in their DNS (a
/// container's monitor makes its veth itself).
fn prepare_nics(d: &Daemon, inst: &Instance) -> Result<()> {
    if inst.config.networks.is_empty() || inst.kind == InstanceKind::Container {
        return Ok(());
    }
    let nets = d.db().networks()?;
    for (i, name) in inst.config.networks.iter().enumerate() {
        let net = nets
            .iter()
            .find(|n| &n.name == name)
            .ok_or_else(|| DaemonError::BadRequest(format!("network '{name}' does not exist")))?;
        netsetup::ensure_tap(&netsetup::tap_name(&inst.name, i), &net.bridge)?;
        // the instance's name belongs to its first NIC on each network
        if !inst.config.networks[..i].contains(name) {
            netsetup::register_host(
                &d.config.state_dir,
                name,
                &inst.name,
                &netsetup::mac(&inst.name, i),
            )?;
        }
    }
    Ok(())
}

fn rotate_log(path: &Path) {
    if std::fs::metadata(path).is_ok_and(|m| m.len() > MAX_LOG) {
        let _ = std::fs::rename(path, path.with_extension("log.1"));
    }
}

/// The last non-empty line of the VMM's log (its one-line error, usually).
pub fn last_log_line(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "no output".into())
}

/// Spawns the VMM of `name`, puts it in its cgroup, records it and waits until it is ready.
pub fn start(d: &Daemon, name: &str, reason: StartReason) -> Result<Instance> {
    start_from(d, name, reason, None)
}

/// [`start`], or with `snapshot`: a VMM that resumes that snapshot directory (VMs only).
pub fn start_from(
    d: &Daemon,
    name: &str,
    reason: StartReason,
    snapshot: Option<&Path>,
) -> Result<Instance> {
    let (inst, _) = d.db().instance(name)?;
    if d.procs().contains_key(name) {
        return Err(DaemonError::Conflict(format!(
            "instance '{name}' is already running"
        )));
    }
    let image = d.db().image(&inst.image)?;
    let cfg = &d.config;
    let run_dir = cfg.instance_run_dir(name);
    let inst_dir = cfg.instance_dir(name);
    for dir in [&run_dir, &inst_dir] {
        std::fs::create_dir_all(dir).map_err(|e| DaemonError::io("create", dir, e))?;
    }
    prepare_nics(d, &inst)?;
    let console = cfg.console_socket(name);
    let _ = std::fs::remove_file(&console);
    let log_path = cfg.vmm_log(name);
    rotate_log(&log_path);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| DaemonError::io("open", &log_path, e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| DaemonError::io("open", &log_path, e))?;

    let mut cmd = Command::new(&cfg.vmm_bin);
    let api = cfg.api_socket(name);
    let _ = std::fs::remove_file(&api);
    let container = inst.kind == InstanceKind::Container;
    let args = match &image.rootfs {
        Some(rootfs) if container => {
            // Whatever a killed monitor left behind goes before a new one starts.
            crate::container::ops::clean_up(d, name);
            crate::container::ops::monitor_args(d, &inst, rootfs)?
        }
        _ => match snapshot {
            Some(dir) => restore_args(dir, &console, &api),
            None => vmm_args(&inst, &image, &console, &api),
        },
    };
    cmd.args(args)
        .env("KAPSEL_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // A VMM joins its group before exec, so its threads and KVM's workers for its VM start
    // there; a container's monitor stays out of the instance's group, which holds the
    // container's processes (the container crate creates and fills it).
    let join = if container {
        Vec::new()
    } else {
        d.cgroups.prepare(name, &inst.config)?
    };
    // SAFETY: setsid and join_before_exec only make async-signal-safe system calls on memory
    // prepared before fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            crate::cgroups::join_before_exec(&join)
        });
    }
    let child = cmd.spawn().map_err(DaemonError::Spawn)?;
    let pid = child.id() as i32;
    drop(child); // the supervisor reaps it through its pidfd
    let started = Instant::now();

    let setup = (|| -> Result<Proc> {
        let start_time = process::start_time(pid).unwrap_or(0);
        let pidfd = process::pidfd_open(pid).map_err(DaemonError::Spawn)?;
        Ok(Proc {
            pid,
            start_time,
            pidfd,
            stop_requested: false,
            started,
        })
    })();
    let proc_ = match setup {
        Ok(p) => p,
        Err(e) => {
            let _ = process::kill(pid, libc::SIGKILL);
            process::reap(pid);
            return Err(e);
        }
    };
    {
        let stored = StoredProcess {
            pid,
            start_time: proc_.start_time,
        };
        let mut procs = d.procs();
        let mut db = d.db();
        db.set_running(name, InstanceStatus::Starting, stored)?;
        if reason == StartReason::User {
            db.set_restarts(name, 0)?;
        } else {
            db.set_restarts(name, inst.restarts.saturating_add(1))?;
        }
        drop(db);
        drop(procs.insert(name.to_string(), proc_));
        let fd = procs
            .get(name)
            .map(|p| std::os::fd::AsRawFd::as_raw_fd(&p.pidfd));
        if let Some(fd) = fd {
            d.watcher.add(fd, pid)?;
        }
    }
    wait_ready(d, name, pid, &console, &log_path)?;
    if !container && crate::iolimits::any(&inst.config) {
        if let Err(e) = crate::iolimits::apply_at_start(d, &inst) {
            tracing::warn!(instance = name, error = %e.line(), "I/O limits not applied");
        }
    }
    if let Some(target) = inst.config.balloon_mib.filter(|t| !container && *t > 0) {
        if let Err(e) = crate::balloon::set_target(d, name, target, Duration::from_secs(10)) {
            tracing::warn!(instance = name, error = %e.line(), "balloon target not applied");
        }
    }
    let kind = match reason {
        StartReason::User => "instance-started",
        StartReason::Restart => "instance-restarted",
    };
    d.event(kind, Some(name), &format!("pid {pid}"));
    tracing::info!(
        instance = name,
        pid,
        ms = started.elapsed().as_millis() as u64,
        "running"
    );
    Ok(d.db().instance(name)?.0)
}

fn wait_ready(d: &Daemon, name: &str, pid: i32, console: &Path, log: &Path) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        {
            let procs = d.procs();
            let alive = procs.get(name).is_some_and(|p| p.pid == pid);
            if !alive {
                return Err(DaemonError::StartFailed(last_log_line(log)));
            }
            if console.exists() {
                d.db().set_status(name, InstanceStatus::Running)?;
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            tracing::warn!(
                instance = name,
                "VMM not ready in time; leaving it starting"
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Stops the VMM of `name`: SIGTERM (the VMM stops its vCPUs and exits) or, with `force` or
/// after the stop timeout, SIGKILL. Returns once the supervisor has seen the process end.
pub fn stop(d: &Daemon, name: &str, force: bool) -> Result<()> {
    let pid = {
        let mut procs = d.procs();
        let Some(p) = procs.get_mut(name) else {
            return Err(DaemonError::Conflict(format!(
                "instance '{name}' is not running"
            )));
        };
        p.stop_requested = true;
        let pid = p.pid;
        d.db().set_status(name, InstanceStatus::Stopping)?;
        pid
    };
    let first = if force { libc::SIGKILL } else { libc::SIGTERM };
    let _ = process::kill(pid, first);
    if wait_gone(d, name, pid, d.config.stop_timeout) {
        return Ok(());
    }
    tracing::warn!(instance = name, pid, "VMM ignored SIGTERM; killing it");
    let _ = process::kill(pid, libc::SIGKILL);
    if wait_gone(d, name, pid, Duration::from_secs(10)) {
        Ok(())
    } else {
        Err(DaemonError::Conflict(format!(
            "instance '{name}' (pid {pid}) did not end after SIGKILL"
        )))
    }
}

fn wait_gone(d: &Daemon, name: &str, pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if d.procs().get(name).is_none_or(|p| p.pid != pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::daemon::{InstanceConfig, RestartPolicy};

    #[test]
    fn args_join_cmdlines_and_name_the_console() {
        let config = InstanceConfig {
            cpus: 2,
            cmdline: "test=idle".into(),
            restart: RestartPolicy::No,
            ..crate::test_util::config()
        };
        let inst = crate::test_util::instance("a", "i", config);
        let image = Image {
            name: "i".into(),
            kind: Default::default(),
            kernel: "/k".into(),
            rootfs: None,
            initrd: Some("/i".into()),
            disk: None,
            cmdline: "console=ttyS0".into(),
            size_bytes: 0,
            created_at: 0,
        };
        let args = vmm_args(
            &inst,
            &image,
            Path::new("/run/c.sock"),
            Path::new("/run/a.sock"),
        );
        assert_eq!(
            args.join(" "),
            "run --kernel /k --initrd /i --cmdline console=ttyS0 test=idle --cpus 2 \
             --memory 64M --console socket:/run/c.sock --api-socket /run/a.sock"
        );
    }
}
