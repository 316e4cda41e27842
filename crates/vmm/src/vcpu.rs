//! vCPU threads: each runs `KVM_RUN` in a loop, dispatches port and MMIO exits to the buses,
//! and obeys commands (pause, resume, save state) sent by the control loop. A command is
//! delivered by a message plus a signal that kicks the thread out of `KVM_RUN`; the sender
//! repeats the kick until the thread answers, which closes the race with a thread that was
//! about to enter the guest. Exits that end the VM are reported through [`ExitSignal`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::Bus;
use hv::{Vcpu, VcpuState, VmExit};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::{VmExitReason, VmmError};

/// `KVM_SYSTEM_EVENT_*` types.
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const SYSTEM_EVENT_RESET: u32 = 2;
const SYSTEM_EVENT_CRASH: u32 = 3;
/// How long a vCPU gets to answer a command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// Exits handled in userspace, for the API's counters.
    pub io_exits: Arc<AtomicU64>,
}

/// A request to a vCPU thread.
#[derive(Debug)]
pub enum VcpuCommand {
    Pause,
    Resume,
    /// Read the complete vCPU state (the vCPU must be paused); the MSRs to save.
    SaveState(Arc<Vec<u32>>),
}

/// A vCPU thread's answer.
#[derive(Debug)]
pub enum VcpuResponse {
    Paused,
    Resumed,
    State(Box<VcpuState>),
    Error(String),
}

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("vCPU {0} has stopped")]
    Gone(u8),
    #[error("vCPU {0} did not answer within {COMMAND_TIMEOUT:?}")]
    Timeout(u8),
}

/// The control side of one vCPU thread.
pub struct VcpuHandle {
    id: u8,
    thread: JoinHandle<()>,
    commands: Sender<VcpuCommand>,
    responses: Receiver<VcpuResponse>,
}

impl VcpuHandle {
    pub fn id(&self) -> u8 {
        self.id
    }

    /// Sends `cmd` and waits for the answer, kicking the thread out of the guest meanwhile.
    pub fn request(&self, cmd: VcpuCommand) -> Result<VcpuResponse, VcpuError> {
        self.commands
            .send(cmd)
            .map_err(|_| VcpuError::Gone(self.id))?;
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let _ = self.thread.kill(kick_signal());
            match self.responses.recv_timeout(Duration::from_millis(2)) {
                Ok(r) => return Ok(r),
                Err(RecvTimeoutError::Disconnected) => return Err(VcpuError::Gone(self.id)),
                Err(RecvTimeoutError::Timeout) => {
                    if self.thread.is_finished() {
                        return Err(VcpuError::Gone(self.id));
                    }
                    if Instant::now() > deadline {
                        return Err(VcpuError::Timeout(self.id));
                    }
                }
            }
        }
    }
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

/// Runs `vcpu` on its own thread until the VM stops; it starts paused if `paused`.
pub fn spawn_vcpu(vcpu: Vcpu, ctx: VcpuContext, paused: bool) -> Result<VcpuHandle, VmmError> {
    install_kick_handler()?;
    let id = vcpu.id();
    let name = format!("vcpu{id}");
    let (cmd_tx, cmd_rx) = channel();
    let (resp_tx, resp_rx) = channel();
    let thread = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let mut thread = VcpuThread {
                vcpu,
                ctx,
                commands: cmd_rx,
                responses: resp_tx,
                paused,
            };
            thread.run();
        })
        .map_err(|source| VmmError::Thread { name, source })?;
    Ok(VcpuHandle {
        id,
        thread,
        commands: cmd_tx,
        responses: resp_rx,
    })
}

struct VcpuThread {
    vcpu: Vcpu,
    ctx: VcpuContext,
    commands: Receiver<VcpuCommand>,
    responses: Sender<VcpuResponse>,
    paused: bool,
}

impl VcpuThread {
    fn run(&mut self) {
        loop {
            if !self.handle_commands() || self.ctx.stop.load(Ordering::Acquire) {
                return;
            }
            if let Some(reason) = self.run_once() {
                self.ctx.exit.set(reason);
                return;
            }
        }
    }

    /// Handles pending commands (blocking while paused). Returns false when the control side
    /// is gone and the thread must end.
    fn handle_commands(&mut self) -> bool {
        loop {
            let cmd = if self.paused {
                match self.commands.recv() {
                    Ok(c) => c,
                    Err(_) => return false,
                }
            } else {
                match self.commands.try_recv() {
                    Ok(c) => c,
                    Err(TryRecvError::Empty) => return true,
                    Err(TryRecvError::Disconnected) => return false,
                }
            };
            let response = match cmd {
                VcpuCommand::Pause => {
                    self.complete_pending_io();
                    self.paused = true;
                    VcpuResponse::Paused
                }
                VcpuCommand::Resume => {
                    self.paused = false;
                    VcpuResponse::Resumed
                }
                VcpuCommand::SaveState(msrs) => match self.vcpu.save_state(&msrs) {
                    Ok(s) => VcpuResponse::State(Box::new(s)),
                    Err(e) => VcpuResponse::Error(e.to_string()),
                },
            };
            if self.responses.send(response).is_err() {
                return false;
            }
            if self.ctx.stop.load(Ordering::Acquire) {
                return false;
            }
        }
    }

    /// Re-enters KVM with `immediate_exit` set so KVM finishes an I/O instruction whose exit
    /// was handled, without running guest code; the saved state is then consistent.
    fn complete_pending_io(&mut self) {
        self.vcpu.set_immediate_exit(true);
        let _ = self.vcpu.run();
        self.vcpu.set_immediate_exit(false);
    }

    /// The registers that explain a CPU shutdown, on one line: where the guest was, its
    /// stack, paging and descriptor tables.
    fn fault_registers(&self) -> String {
        match (self.vcpu.get_regs(), self.vcpu.get_sregs()) {
            (Ok(r), Ok(s)) => format!(
                "rip {:#x} rsp {:#x} rflags {:#x} cs {:#x} cr0 {:#x} cr2 {:#x} cr3 {:#x} \
                 cr4 {:#x} efer {:#x} idt {:#x}/{:#x} gdt {:#x}/{:#x}",
                r.rip,
                r.rsp,
                r.rflags,
                s.cs.selector,
                s.cr0,
                s.cr2,
                s.cr3,
                s.cr4,
                s.efer,
                s.idt.base,
                s.idt.limit,
                s.gdt.base,
                s.gdt.limit
            ),
            (Err(e), _) | (_, Err(e)) => format!("unknown registers ({e})"),
        }
    }

    /// One `KVM_RUN`; returns why the VM must end, if it must.
    fn run_once(&mut self) -> Option<VmExitReason> {
        let id = self.vcpu.id();
        let ctx = &self.ctx;
        let exit = match self.vcpu.run() {
            Ok(exit) => exit,
            Err(e) => {
                return Some(VmExitReason::KvmError {
                    vcpu: id,
                    detail: e.to_string(),
                })
            }
        };
        let end = match exit {
            VmExit::IoIn { port, data } => {
                ctx.io_exits.fetch_add(1, Ordering::Relaxed);
                if !ctx.pio_bus.read(u64::from(port), data) {
                    data.fill(0xff);
                }
                None
            }
            VmExit::IoOut { port, data } => {
                ctx.io_exits.fetch_add(1, Ordering::Relaxed);
                ctx.pio_bus.write(u64::from(port), data);
                None
            }
            VmExit::MmioRead { addr, data } => {
                ctx.io_exits.fetch_add(1, Ordering::Relaxed);
                if !ctx.mmio_bus.read(addr, data) {
                    data.fill(0xff);
                }
                None
            }
            VmExit::MmioWrite { addr, data } => {
                ctx.io_exits.fetch_add(1, Ordering::Relaxed);
                ctx.mmio_bus.write(addr, data);
                None
            }
            VmExit::Interrupted => None,
            VmExit::Hlt => Some(VmExitReason::PowerOff),
            VmExit::Shutdown => Some(VmExitReason::TripleFault {
                vcpu: id,
                registers: String::new(),
            }),
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
        end.map(|mut reason| {
            match &mut reason {
                VmExitReason::KvmError { detail, .. } => {
                    if let (Ok(regs), Ok(sregs)) = (self.vcpu.get_regs(), self.vcpu.get_sregs()) {
                        detail.push_str(&format!(
                            " at rip {:#x} (cr0 {:#x}, efer {:#x})",
                            regs.rip, sregs.cr0, sregs.efer
                        ));
                    }
                }
                VmExitReason::TripleFault { registers, .. } => {
                    *registers = self.fault_registers();
                }
                _ => {}
            }
            reason
        })
    }
}

/// Stops every vCPU thread: sets the stop flag, closes their command channels (which ends a
/// paused thread) and kicks running ones out of `KVM_RUN` until they have all returned.
pub fn stop_vcpus(stop: &AtomicBool, handles: Vec<VcpuHandle>) {
    stop.store(true, Ordering::Release);
    let threads: Vec<JoinHandle<()>> = handles.into_iter().map(|h| h.thread).collect();
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
