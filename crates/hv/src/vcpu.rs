//! A virtual CPU: register access and the `KVM_RUN` loop step, translated into [`VmExit`].

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_regs, kvm_sregs, CpuId, Msrs};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::HvError;

/// Why `KVM_RUN` returned, in kapsel's terms. Port and MMIO data slices point into the shared
/// `kvm_run` page: for reads the handler fills `data`, and the next [`Vcpu::run`] hands it to
/// the guest.
#[derive(Debug)]
pub enum VmExit<'a> {
    IoIn {
        port: u16,
        data: &'a mut [u8],
    },
    IoOut {
        port: u16,
        data: &'a [u8],
    },
    MmioRead {
        addr: u64,
        data: &'a mut [u8],
    },
    MmioWrite {
        addr: u64,
        data: &'a [u8],
    },
    /// The vCPU executed HLT with the in-kernel LAPIC absent (does not happen with an irqchip).
    Hlt,
    /// Triple fault or another condition that resets the CPU.
    Shutdown,
    /// `KVM_SYSTEM_EVENT` (shutdown/reset/crash requested through a paravirtual interface).
    SystemEvent {
        kind: u32,
    },
    /// KVM could not emulate something; `suberror` is `KVM_INTERNAL_ERROR_*`.
    InternalError {
        suberror: u32,
    },
    /// VM entry failed (invalid guest state); `reason` is the hardware reason code.
    FailEntry {
        reason: u64,
    },
    /// `KVM_RUN` was interrupted by a signal or `immediate_exit`; no guest state changed.
    Interrupted,
    /// Anything kapsel does not handle, with a name for the log.
    Unhandled(&'static str),
}

/// A KVM vCPU.
#[derive(Debug)]
pub struct Vcpu {
    fd: VcpuFd,
    id: u8,
}

impl Vcpu {
    pub(crate) fn new(fd: VcpuFd, id: u8) -> Self {
        Vcpu { fd, id }
    }

    /// The vCPU index (and initial APIC ID).
    pub fn id(&self) -> u8 {
        self.id
    }

    pub fn set_cpuid(&self, cpuid: &CpuId) -> Result<(), HvError> {
        self.fd
            .set_cpuid2(cpuid)
            .map_err(HvError::ioctl("KVM_SET_CPUID2"))
    }

    pub fn get_regs(&self) -> Result<kvm_regs, HvError> {
        self.fd.get_regs().map_err(HvError::ioctl("KVM_GET_REGS"))
    }

    pub fn set_regs(&self, regs: &kvm_regs) -> Result<(), HvError> {
        self.fd
            .set_regs(regs)
            .map_err(HvError::ioctl("KVM_SET_REGS"))
    }

    pub fn get_sregs(&self) -> Result<kvm_sregs, HvError> {
        self.fd.get_sregs().map_err(HvError::ioctl("KVM_GET_SREGS"))
    }

    pub fn set_sregs(&self, sregs: &kvm_sregs) -> Result<(), HvError> {
        self.fd
            .set_sregs(sregs)
            .map_err(HvError::ioctl("KVM_SET_SREGS"))
    }

    pub fn set_fpu(&self, fpu: &kvm_fpu) -> Result<(), HvError> {
        self.fd.set_fpu(fpu).map_err(HvError::ioctl("KVM_SET_FPU"))
    }

    /// Writes all `msrs`; fails unless KVM accepted every one of them.
    pub fn set_msrs(&self, msrs: &Msrs) -> Result<(), HvError> {
        let written = self
            .fd
            .set_msrs(msrs)
            .map_err(HvError::ioctl("KVM_SET_MSRS"))?;
        if written != msrs.as_fam_struct_ref().nmsrs as usize {
            let index = msrs.as_slice().get(written).map_or(0, |e| e.index);
            return Err(HvError::Ioctl {
                op: "KVM_SET_MSRS",
                source: std::io::Error::other(format!("MSR {index:#x} was rejected")),
            });
        }
        Ok(())
    }

    pub fn get_lapic(&self) -> Result<kvm_lapic_state, HvError> {
        self.fd.get_lapic().map_err(HvError::ioctl("KVM_GET_LAPIC"))
    }

    pub fn set_lapic(&self, lapic: &kvm_lapic_state) -> Result<(), HvError> {
        self.fd
            .set_lapic(lapic)
            .map_err(HvError::ioctl("KVM_SET_LAPIC"))
    }

    /// Sets or clears `kvm_run.immediate_exit`: while set, `KVM_RUN` returns at once with
    /// EINTR, which closes the race between checking for a stop request and entering the guest.
    pub fn set_immediate_exit(&mut self, on: bool) {
        self.fd.set_kvm_immediate_exit(u8::from(on));
    }

    /// Runs the vCPU until the next exit that needs userspace.
    pub fn run(&mut self) -> Result<VmExit<'_>, HvError> {
        // The kvm_run page stays mapped for the vCPU's life; keep a pointer to read the
        // internal-error details without a second borrow of `fd` while `exit` is alive.
        let run_page: *const kvm_bindings::kvm_run = self.fd.get_kvm_run();
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                return Ok(VmExit::Interrupted)
            }
            Err(e) => return Err(HvError::ioctl("KVM_RUN")(e)),
        };
        Ok(match exit {
            VcpuExit::IoIn(port, data) => VmExit::IoIn { port, data },
            VcpuExit::IoOut(port, data) => VmExit::IoOut { port, data },
            VcpuExit::MmioRead(addr, data) => VmExit::MmioRead { addr, data },
            VcpuExit::MmioWrite(addr, data) => VmExit::MmioWrite { addr, data },
            VcpuExit::Hlt => VmExit::Hlt,
            VcpuExit::Shutdown => VmExit::Shutdown,
            VcpuExit::SystemEvent(kind, _) => VmExit::SystemEvent { kind },
            VcpuExit::FailEntry(reason, _) => VmExit::FailEntry { reason },
            VcpuExit::Intr => VmExit::Interrupted,
            VcpuExit::InternalError => VmExit::InternalError {
                // SAFETY: `run_page` points at this vCPU's mapped kvm_run page, which lives as
                // long as `self.fd`; KVM filled the `internal` union member because the exit
                // reason was KVM_EXIT_INTERNAL_ERROR, and a u32 read of it is initialised.
                suberror: unsafe { (*run_page).__bindgen_anon_1.internal.suberror },
            },
            VcpuExit::Exception => VmExit::Unhandled("exception"),
            VcpuExit::Debug(_) => VmExit::Unhandled("debug"),
            VcpuExit::IrqWindowOpen => VmExit::Unhandled("irq-window-open"),
            VcpuExit::Hypercall(_) => VmExit::Unhandled("hypercall"),
            VcpuExit::IoapicEoi(_) => VmExit::Unhandled("ioapic-eoi"),
            VcpuExit::X86Rdmsr(_) => VmExit::Unhandled("rdmsr"),
            VcpuExit::X86Wrmsr(_) => VmExit::Unhandled("wrmsr"),
            VcpuExit::MemoryFault { .. } => VmExit::Unhandled("memory-fault"),
            _ => VmExit::Unhandled("unknown"),
        })
    }
}
