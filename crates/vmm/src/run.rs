//! The control loop of a running VM: waits for the guest to end (reset, power-off, a fatal
//! vCPU exit), for SIGINT/SIGTERM/SIGHUP, the console escape or an API request, and carries
//! out API operations on the control thread.

use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kapsel_http::Response;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::api::{error_response, json_response, spawn_api_server, ApiRequest, ApiServer};
use crate::builder::{build_vm, restore_vm, BuiltVm};
use crate::console::{spawn_stdin_reader, RawTerminal};
use crate::vm::Vmm;
use crate::{VmConfig, VmExitReason, VmmError};

/// Signals that stop the VM cleanly; blocked in every thread and read through a signalfd.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// How the VMM process is driven, beyond the VM's own configuration.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Serve the control API on this UNIX socket.
    pub api_socket: Option<PathBuf>,
    /// Start with the vCPUs paused (resume through the API).
    pub paused: bool,
    /// Leave the process without its seccomp filter (debugging only).
    pub no_seccomp: bool,
}

/// Blocks the stop signals in this thread (and the threads it spawns later) and returns a
/// signalfd that reports them.
fn stop_signalfd() -> Result<RawFd, VmmError> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t for these libc calls.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in STOP_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
    }
    // SAFETY: changes this thread's mask to include a valid, initialised set.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(VmmError::Signals(std::io::Error::from_raw_os_error(rc)));
    }
    // SAFETY: creates a new signalfd for a valid set; the fd is owned by the caller.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd < 0 {
        return Err(VmmError::Signals(std::io::Error::last_os_error()));
    }
    Ok(fd)
}

/// Builds and runs the VM to its end. `start` is the process start, for the boot timer.
pub fn run_vm(
    config: &VmConfig,
    start: Instant,
    opts: &RunOptions,
) -> Result<VmExitReason, VmmError> {
    let sigfd = stop_signalfd()?;
    let built = build_vm(config, start)?;
    drive(config.clone(), built, start, opts, sigfd, None)
}

/// Restores the VM saved in `dir` (with `overrides` applied) in this process and runs it to
/// its end.
pub fn restore_and_run(
    dir: &Path,
    overrides: &crate::RestoreOverrides,
    start: Instant,
    opts: &RunOptions,
) -> Result<VmExitReason, VmmError> {
    let sigfd = stop_signalfd()?;
    let (built, config) = restore_vm(dir, start, overrides)?;
    drive(config, built, start, opts, sigfd, Some(dir.to_path_buf()))
}

fn drive(
    config: VmConfig,
    built: BuiltVm,
    start: Instant,
    opts: &RunOptions,
    sigfd: RawFd,
    restored_from: Option<PathBuf>,
) -> Result<VmExitReason, VmmError> {
    let api = opts
        .api_socket
        .as_deref()
        .map(spawn_api_server)
        .transpose()?;
    let terminal = RawTerminal::enable(0);
    let escape_evt = EventFd::new(EFD_NONBLOCK).map_err(VmmError::EventFd)?;
    spawn_stdin_reader(
        built.devices.serial.clone(),
        terminal.is_some(),
        escape_evt.try_clone().map_err(VmmError::EventFd)?,
    )
    .map_err(|source| VmmError::Thread {
        name: "console-in".into(),
        source,
    })?;
    if !opts.no_seccomp {
        crate::seccomp::apply()?;
    }
    let mut vmm = Vmm::start(config, built, start, opts.paused, restored_from)?;
    tracing::info!(
        elapsed_us = start.elapsed().as_micros() as u64,
        "vCPUs started"
    );
    let result = control_loop(&mut vmm, sigfd, &escape_evt, api.as_ref());
    vmm.stop();
    drop(terminal);
    drop(api);
    // SAFETY: closes the signalfd this module created and nobody else uses.
    unsafe { libc::close(sigfd) };
    if let Ok(reason) = &result {
        tracing::info!(%reason, "VM ended");
    }
    result
}

const SIGNAL: u64 = 0;
const VCPU_EXIT: u64 = 1;
const RESET: u64 = 2;
const SHUTDOWN: u64 = 3;
const ESCAPE: u64 = 4;
const API: u64 = 5;

fn control_loop(
    vmm: &mut Vmm,
    sigfd: RawFd,
    escape_evt: &EventFd,
    api: Option<&ApiServer>,
) -> Result<VmExitReason, VmmError> {
    let epoll = Epoll::new().map_err(VmmError::Signals)?;
    let mut fds = vec![
        (sigfd, SIGNAL),
        (vmm.exit_signal().evt.as_raw_fd(), VCPU_EXIT),
        (vmm.devices().reset_evt.as_raw_fd(), RESET),
        (vmm.devices().shutdown_evt.as_raw_fd(), SHUTDOWN),
        (escape_evt.as_raw_fd(), ESCAPE),
    ];
    if let Some(api) = api {
        fds.push((api.evt.as_raw_fd(), API));
    }
    for (fd, token) in fds {
        epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
            .map_err(VmmError::Signals)?;
    }
    let mut events = vec![EpollEvent::default(); 8];
    loop {
        let timeout_ms = match vmm.shutdown_deadline() {
            Some(d) => d.saturating_duration_since(Instant::now()).as_millis() as i32,
            None => -1,
        };
        let n = match epoll.wait(timeout_ms, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(VmmError::Signals(e)),
        };
        if n == 0 && vmm.shutdown_deadline().is_some() {
            tracing::warn!("guest did not shut down in time; stopping it");
            return Ok(VmExitReason::Stopped);
        }
        for ev in &events[..n] {
            match ev.data() {
                SIGNAL => {
                    let signo = read_signal(sigfd);
                    tracing::info!(signo, "stop signal received");
                    return Ok(VmExitReason::Stopped);
                }
                VCPU_EXIT => {
                    let _ = vmm.exit_signal().evt.read();
                    if let Some(reason) = vmm.exit_signal().take() {
                        return Ok(guest_end_first(vmm, reason));
                    }
                }
                RESET => return Ok(VmExitReason::Reset),
                SHUTDOWN => return Ok(VmExitReason::PowerOff),
                ESCAPE => return Ok(VmExitReason::Stopped),
                API => {
                    if let Some(api) = api {
                        let _ = api.evt.read();
                        while let Ok((req, reply)) = api.requests.try_recv() {
                            let (response, end) = handle_api(vmm, req);
                            let _ = reply.send(response);
                            if end {
                                return Ok(VmExitReason::Stopped);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// A guest that already powered off or reset the machine has ended, whatever a vCPU did
/// after that: real hardware would be off, while here the other vCPUs run on for the moment
/// the control loop needs to stop them (Linux may triple-fault a CPU it parked).
fn guest_end_first(vmm: &Vmm, vcpu_reason: VmExitReason) -> VmExitReason {
    if vmm.devices().shutdown_evt.read().is_ok() {
        VmExitReason::PowerOff
    } else if vmm.devices().reset_evt.read().is_ok() {
        VmExitReason::Reset
    } else {
        vcpu_reason
    }
}

/// Carries out one API request; the flag says the VM must end now.
fn handle_api(vmm: &mut Vmm, req: ApiRequest) -> (Response, bool) {
    let fail = |e: crate::vm::VmActionError| error_response(e.status(), e.to_string());
    match req {
        ApiRequest::Info => (json_response(200, &vmm.info()), false),
        ApiRequest::Metrics => (Response::json(200, vmm.metrics().into_bytes()), false),
        ApiRequest::Pause => match vmm.pause() {
            Ok(()) => (json_response(200, &vmm.info()), false),
            Err(e) => (fail(e), false),
        },
        ApiRequest::Resume => match vmm.resume() {
            Ok(()) => (json_response(200, &vmm.info()), false),
            Err(e) => (fail(e), false),
        },
        ApiRequest::Reboot => match vmm.reboot() {
            Ok(()) => (json_response(200, &vmm.info()), false),
            Err(e) => (fail(e), false),
        },
        ApiRequest::Shutdown { timeout_ms } => {
            match vmm.shutdown(Duration::from_millis(timeout_ms)) {
                Ok(now) => (json_response(200, &vmm.info()), now),
                Err(e) => (fail(e), false),
            }
        }
        ApiRequest::Snapshot { path } => match vmm.snapshot(Path::new(&path)) {
            Ok(info) => (json_response(200, &info), false),
            Err(e) => (fail(e), false),
        },
        ApiRequest::DiskLimits { id } => (limits_response(vmm.disk_limits(&id)), false),
        ApiRequest::SetDiskLimits { id, limit } => {
            (limits_response(vmm.set_disk_limits(&id, &limit)), false)
        }
        ApiRequest::DiskBackend { id } => (backend_response(vmm.disk_backend(&id)), false),
        ApiRequest::SetDiskBackend { id, backend } => {
            (backend_response(vmm.set_disk_backend(&id, &backend)), false)
        }
        ApiRequest::Balloon => (balloon_response(vmm.balloon()), false),
        ApiRequest::SetBalloon { target_mib } => {
            (balloon_response(vmm.set_balloon(target_mib)), false)
        }
        ApiRequest::NetLimits { id } => (limits_response(vmm.net_limits(&id)), false),
        ApiRequest::SetNetLimits { id, limits } => {
            (limits_response(vmm.set_net_limits(&id, &limits)), false)
        }
    }
}

fn balloon_response(
    result: Result<api::vm::BalloonInfo, crate::balloon::BalloonError>,
) -> Response {
    match result {
        Ok(info) => json_response(200, &info),
        Err(e) => error_response(e.status(), e.to_string()),
    }
}

fn backend_response(
    result: Result<api::vm::DiskBackend, crate::disk_backend::DiskBackendError>,
) -> Response {
    match result {
        Ok(backend) => json_response(200, &backend),
        Err(e) => error_response(e.status(), e.line()),
    }
}

fn limits_response<T: serde::Serialize>(
    result: Result<T, crate::io_limits::IoLimitError>,
) -> Response {
    match result {
        Ok(limits) => json_response(200, &limits),
        Err(e) => error_response(e.status(), e.to_string()),
    }
}

/// Reads one pending signal from the signalfd; returns its number (0 if none).
fn read_signal(sigfd: RawFd) -> u32 {
    // SAFETY: signalfd_siginfo is plain data.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: reads at most `size` bytes into `info`, which is that large.
    let n = unsafe {
        libc::read(
            sigfd,
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            size,
        )
    };
    if n as usize == size {
        info.ssi_signo
    } else {
        0
    }
}
