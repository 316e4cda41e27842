//! The control loop of a running VM: waits for the guest to end (reset, power-off, a fatal
//! vCPU exit), for SIGINT/SIGTERM/SIGHUP or the console escape, then stops the vCPUs.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::builder::build_vm;
use crate::console::{spawn_stdin_reader, RawTerminal};
use crate::vcpu::{spawn_vcpu, stop_vcpus, ExitSignal, VcpuContext};
use crate::{VmConfig, VmExitReason, VmmError};

/// Signals that stop the VM cleanly; blocked in every thread and read through a signalfd.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

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
pub fn run_vm(config: &VmConfig, start: Instant) -> Result<VmExitReason, VmmError> {
    let sigfd = stop_signalfd()?;
    let built = build_vm(config, start)?;

    let exit = Arc::new(ExitSignal::new()?);
    let stop = Arc::new(AtomicBool::new(false));
    let ctx = VcpuContext {
        pio_bus: built.devices.pio_bus.clone(),
        mmio_bus: built.devices.mmio_bus.clone(),
        stop: stop.clone(),
        exit: exit.clone(),
    };

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

    let mut threads = Vec::with_capacity(built.vcpus.len());
    for vcpu in built.vcpus {
        threads.push(spawn_vcpu(vcpu, ctx.clone())?);
    }

    let reason = wait_for_end(
        sigfd,
        &exit,
        &built.devices.reset_evt,
        &built.devices.shutdown_evt,
        &escape_evt,
    )?;
    stop_vcpus(&stop, threads);
    drop(terminal);
    // SAFETY: closes the signalfd this function created and nobody else uses.
    unsafe { libc::close(sigfd) };
    tracing::info!(%reason, "VM ended");
    Ok(reason)
}

fn wait_for_end(
    sigfd: RawFd,
    exit: &ExitSignal,
    reset_evt: &EventFd,
    shutdown_evt: &EventFd,
    escape_evt: &EventFd,
) -> Result<VmExitReason, VmmError> {
    const SIGNAL: u64 = 0;
    const VCPU_EXIT: u64 = 1;
    const RESET: u64 = 2;
    const SHUTDOWN: u64 = 3;
    const ESCAPE: u64 = 4;
    let epoll = Epoll::new().map_err(VmmError::Signals)?;
    for (fd, token) in [
        (sigfd, SIGNAL),
        (exit.evt.as_raw_fd(), VCPU_EXIT),
        (reset_evt.as_raw_fd(), RESET),
        (shutdown_evt.as_raw_fd(), SHUTDOWN),
        (escape_evt.as_raw_fd(), ESCAPE),
    ] {
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
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(VmmError::Signals(e)),
        };
        for ev in &events[..n] {
            match ev.data() {
                SIGNAL => {
                    let signo = read_signal(sigfd);
                    tracing::info!(signo, "stop signal received");
                    return Ok(VmExitReason::Stopped);
                }
                VCPU_EXIT => {
                    let _ = exit.evt.read();
                    if let Some(reason) = exit.take() {
                        return Ok(reason);
                    }
                }
                RESET => return Ok(VmExitReason::Reset),
                SHUTDOWN => return Ok(VmExitReason::PowerOff),
                ESCAPE => return Ok(VmExitReason::Stopped),
                _ => {}
            }
        }
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
