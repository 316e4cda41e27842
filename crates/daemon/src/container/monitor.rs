//! The monitor process of one container (`kapsel container-monitor SPEC`), spawned by the
//! daemon in its own session so that neither a daemon restart nor a signal to the daemon's
//! process group reaches it or the container.
//!
//! It creates the container (overlay of the image under the instance's persistent writable
//! layer, the instance's cgroup and limits, a pty), wires its network before its program
//! runs, serves the pty on the console socket (whose existence tells the daemon the
//! container runs), and waits. SIGTERM stops the container (SIGTERM to its first process,
//! SIGKILL after the stop timeout) and ends the monitor with exit 0; otherwise the monitor
//! exits with the container's exit code, which the daemon's restart policy judges.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use container::config::MountConfig;
use container::signals::{read_signal, sigset};
use container::{Container, ContainerConfig, CreateOptions, RootfsSource, Stdio};

use crate::cgroups;
use crate::container::net;
use crate::container::relay::Relay;
use crate::container::spec::MonitorSpec;
use crate::error::{DaemonError, Result};

/// Signals that ask the monitor to stop its container.
const STOP_SIGNALS: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

fn signalfd(signals: &[i32]) -> Result<OwnedFd> {
    let set = sigset(signals);
    // SAFETY: blocking signals of this (single-threaded) process so signalfd receives them;
    // the container's process unblocks everything before it runs its program.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    // SAFETY: signalfd on a valid set; the fd is wrapped right away.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(DaemonError::io(
            "create",
            "signalfd",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: fd is fresh and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The container's configuration from the spec.
pub fn container_config(spec: &MonitorSpec) -> ContainerConfig {
    let mut cfg = ContainerConfig::new(
        &spec.name,
        RootfsSource::Overlay(vec![spec.rootfs.clone()]),
        spec.command(),
    );
    cfg.overlay_upper = Some(spec.layer.clone());
    cfg.cgroups_path = spec.cgroup.clone();
    cfg.resources = cgroups::container_resources(&spec.config, spec.host_cpus);
    cfg.process.terminal = true;
    if let Some(resolv) = spec.net.as_ref().and_then(|n| n.resolv_conf.as_ref()) {
        cfg.mounts.push(MountConfig {
            destination: "/etc/resolv.conf".into(),
            kind: "bind".into(),
            source: resolv.display().to_string(),
            options: vec!["bind".into(), "ro".into()],
        });
    }
    cfg
}

/// Removes what an earlier monitor of this container left (a container whose monitor was
/// killed keeps running until someone kills it).
pub fn remove_leftover(state_root: &Path, name: &str) {
    if let Ok(c) = Container::load(state_root, name) {
        tracing::warn!(
            container = name,
            pid = c.pid(),
            "removing a leftover container"
        );
        if let Err(e) = c.delete(true) {
            tracing::warn!(container = name, error = %e, "cannot remove leftover container");
        }
    }
}

/// Runs the monitor; returns its exit code.
pub fn run(spec_path: &Path) -> Result<i32> {
    let spec = MonitorSpec::load(spec_path)?;
    let sfd = signalfd(&STOP_SIGNALS)?;
    remove_leftover(&spec.state_root, &spec.name);
    let cfg = container_config(&spec);
    let opts = CreateOptions {
        state_root: spec.state_root.clone(),
        stdio: Stdio::default(),
        console_socket: None,
        wait_for_start: true,
    };
    let mut c = Container::create(&cfg, &opts)?;
    let started = (|| -> Result<Relay> {
        if let Some(n) = &spec.net {
            net::attach(n, &spec.name, c.pid())?;
        }
        let master = c
            .take_console()
            .ok_or_else(|| DaemonError::Corrupt("the container has no terminal".into()))?;
        // The socket is bound under a temporary name and renamed into place as soon as the
        // program was started, whether or not it is still running: the daemon counts the
        // container as started from then, so a program that exits at once is an exit its
        // restart policy judges, not a failed start.
        let staged = spec.console.with_extension("sock.new");
        let relay = Relay::bind(&staged, master)?;
        c.start()?;
        std::fs::rename(&staged, &spec.console)
            .map_err(|e| DaemonError::io("rename", &staged, e))?;
        Ok(relay)
    })();
    let mut relay = match started {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(spec.console.with_extension("sock.new"));
            let _ = c.delete(true);
            if let Some(n) = &spec.net {
                net::detach(&n.host_if);
            }
            return Err(e);
        }
    };
    tracing::info!(container = %spec.name, pid = c.pid(), "container running");
    let stop_requested = serve(&c, &spec, sfd.as_raw_fd(), &mut relay)?;
    relay.drain();
    let code = c.wait().unwrap_or(255);
    // The console socket stays until the next start replaces it: the daemon shows it only
    // while the monitor runs.
    if let Err(e) = c.delete(true) {
        tracing::warn!(container = %spec.name, error = %e, "cannot remove container");
    }
    if let Some(n) = &spec.net {
        net::detach(&n.host_if);
    }
    tracing::info!(container = %spec.name, code, stop_requested, "container ended");
    Ok(if stop_requested { 0 } else { code })
}

/// Relays the console until the container's first process exits; `true` when a stop
/// signal ended it.
fn serve(c: &Container, spec: &MonitorSpec, sfd: RawFd, relay: &mut Relay) -> Result<bool> {
    let pidfd = crate::process::pidfd_open(c.pid())
        .map_err(|e| DaemonError::io("watch", "the container", e))?;
    let mut stop_requested = false;
    loop {
        let mut fds = vec![
            container::process::poll_in(sfd),
            container::process::poll_in(pidfd.as_raw_fd()),
        ];
        fds.extend(relay.poll_fds());
        // SAFETY: fds is a valid array of pollfd for its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            continue;
        }
        relay.handle(&fds[2..]);
        if fds[1].revents != 0 {
            return Ok(stop_requested);
        }
        if fds[0].revents & libc::POLLIN != 0 && read_signal(sfd).is_some() && !stop_requested {
            stop_requested = true;
            // A paused container cannot act on signals: thaw it first.
            if let Ok(cg) = sandbox::cgroup::open(&spec.cgroup) {
                let _ = cg.set_frozen(false);
            }
            let grace = Duration::from_millis(spec.stop_timeout_ms);
            if let Err(e) = c.stop(grace) {
                tracing::warn!(container = %spec.name, error = %e, "stop failed");
                let _ = c.kill(libc::SIGKILL, true);
            }
        }
    }
}
