//! vCPU threads: each runs `KVM_RUN` in a loop and dispatches port and MMIO exits to the
//! buses. Exits that end the VM are reported through [`ExitSignal`]; the control loop stops
//! the others by setting the stop flag and kicking the threads out of `KVM_RUN` with a signal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use devices::Bus;
use hv::{Vcpu, VmExit};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::{VmExitReason, VmmError};

/// `KVM_SYSTEM_EVENT_*` types.
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const SYSTEM_EVENT_RESET: u32 = 2;
const SYSTEM_EVENT_CRASH: u32 = 3;

/// The first reason the VM has to end, and an eventfd that wakes the control loop.
pub struct ExitSignal {
    reason: Mutex<Option<VmExitReason>>,
    pub evt: EventFd,
}

impl ExitSignal {
    pub fn new() -> Result<Self, VmmError> {
        Ok(ExitSignal {
            reason: Mutex::new(None),
            evt: EventFd::new(EFD_NONBLOCK).map_err(VmmError::EventFd)?,
        })
    }

    /// Records `reason` unless one is already recorded, and wakes the control loop.
    pub fn set(&self, reason: VmExitReason) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some(reason);
        }
        let _ = self.evt.write(1);
    }

    pub fn take(&self) -> Option<VmExitReason> {
        self.reason.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// What every vCPU thread shares.
#[derive(Clone)]
pub struct VcpuContext {
    pub pio_bus: Arc<Bus>,
    pub mmio_bus: Arc<Bus>,
    pub stop: Arc<AtomicBool>,
    pub exit: Arc<ExitSignal>,
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn install_kick_handler() -> Result<(), VmmError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), noop_handler)
            .map_err(|e| VmmError::Signals(std::io::Error::from_raw_os_error(e.errno())));
    });
    result
}

/// Runs `vcpu` on its own thread until the VM stops.
pub fn spawn_vcpu(vcpu: Vcpu, ctx: VcpuContext) -> Result<JoinHandle<()>, VmmError> {
    install_kick_handler()?;
    let name = format!("vcpu{}", vcpu.id());
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || run_loop(vcpu, &ctx))
        .map_err(|source| VmmError::Thread { name, source })
}

fn fill_unmapped(data: &mut [u8]) {
    data.fill(0xff);
}

fn run_loop(mut vcpu: Vcpu, ctx: &VcpuContext) {
    let id = vcpu.id();
    while !ctx.stop.load(Ordering::Acquire) {
        let exit = match vcpu.run() {
            Ok(exit) => exit,
            Err(e) => {
                ctx.exit.set(VmExitReason::KvmError {
                    vcpu: id,
                    detail: e.to_string(),
                });
                return;
            }
        };
        let end = match exit {
            VmExit::IoIn { port, data } => {
                if !ctx.pio_bus.read(u64::from(port), data) {
                    fill_unmapped(data);
                }
                None
            }
            VmExit::IoOut { port, data } => {
                ctx.pio_bus.write(u64::from(port), data);
                None
            }
            VmExit::MmioRead { addr, data } => {
                if !ctx.mmio_bus.read(addr, data) {
                    fill_unmapped(data);
                }
                None
            }
            VmExit::MmioWrite { addr, data } => {
                ctx.mmio_bus.write(addr, data);
                None
            }
            VmExit::Interrupted => None,
            VmExit::Hlt => Some(VmExitReason::PowerOff),
            VmExit::Shutdown => Some(VmExitReason::TripleFault { vcpu: id }),
            VmExit::SystemEvent { kind } => Some(match kind {
                SYSTEM_EVENT_SHUTDOWN => VmExitReason::PowerOff,
                SYSTEM_EVENT_RESET => VmExitReason::Reset,
                SYSTEM_EVENT_CRASH => VmExitReason::GuestCrash { vcpu: id },
                other => VmExitReason::KvmError {
                    vcpu: id,
                    detail: format!("unknown system event {other}"),
                },
            }),
            VmExit::InternalError { suberror } => Some(VmExitReason::KvmError {
                vcpu: id,
                detail: format!("internal error, suberror {suberror} (emulation failure)"),
            }),
            VmExit::FailEntry { reason } => Some(VmExitReason::KvmError {
                vcpu: id,
                detail: format!("VM entry failed, hardware reason {reason:#x}"),
            }),
            VmExit::Unhandled(what) => Some(VmExitReason::KvmError {
                vcpu: id,
                detail: format!("unhandled exit: {what}"),
            }),
        };
        if let Some(mut reason) = end {
            if let VmExitReason::KvmError { detail, .. } = &mut reason {
                if let (Ok(regs), Ok(sregs)) = (vcpu.get_regs(), vcpu.get_sregs()) {
                    detail.push_str(&format!(
                        " at rip {:#x} (cr0 {:#x}, efer {:#x})",
                        regs.rip, sregs.cr0, sregs.efer
                    ));
                }
            }
            ctx.exit.set(reason);
            return;
        }
    }
}

/// Stops every vCPU thread: sets the stop flag, then kicks the threads out of `KVM_RUN`
/// until they have all returned (a kick that lands just before `KVM_RUN` is repeated).
pub fn stop_vcpus(stop: &AtomicBool, threads: Vec<JoinHandle<()>>) {
    stop.store(true, Ordering::Release);
    for _ in 0..400 {
        if threads.iter().all(|t| t.is_finished()) {
            break;
        }
        for t in threads.iter().filter(|t| !t.is_finished()) {
            let _ = t.kill(kick_signal());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for t in threads {
        if t.is_finished() {
            let _ = t.join();
        }
    }
}
