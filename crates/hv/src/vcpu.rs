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

/// Everything KVM holds for one vCPU that a snapshot needs, in KVM's own types.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct VcpuState {
    pub cpuid: Vec<kvm_bindings::kvm_cpuid_entry2>,
    pub msrs: Vec<kvm_bindings::kvm_msr_entry>,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_bindings::kvm_xsave,
    pub xcrs: kvm_bindings::kvm_xcrs,
    pub debug_regs: kvm_bindings::kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub mp_state: kvm_bindings::kvm_mp_state,
    pub vcpu_events: kvm_bindings::kvm_vcpu_events,
    pub tsc_khz: Option<u32>,
}

impl Vcpu {
    /// Reads the vCPU's complete state. `msr_indices` lists the MSRs to save; the ones KVM
    /// refuses to read are left out.
    pub fn save_state(&self, msr_indices: &[u32]) -> Result<VcpuState, HvError> {
        let cpuid = self
            .fd
            .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(HvError::ioctl("KVM_GET_CPUID2"))?
            .as_slice()
            .to_vec();
        let mp_state = self
            .fd
            .get_mp_state()
            .map_err(HvError::ioctl("KVM_GET_MP_STATE"))?;
        let regs = self.get_regs()?;
        let sregs = self.get_sregs()?;
        let xsave = self
            .fd
            .get_xsave()
            .map_err(HvError::ioctl("KVM_GET_XSAVE"))?;
        let xcrs = self.fd.get_xcrs().map_err(HvError::ioctl("KVM_GET_XCRS"))?;
        let debug_regs = self
            .fd
            .get_debug_regs()
            .map_err(HvError::ioctl("KVM_GET_DEBUGREGS"))?;
        let lapic = self.get_lapic()?;
        let msrs = self.read_msrs(msr_indices)?;
        let vcpu_events = self
            .fd
            .get_vcpu_events()
            .map_err(HvError::ioctl("KVM_GET_VCPU_EVENTS"))?;
        let tsc_khz = self.fd.get_tsc_khz().ok();
        Ok(VcpuState {
            cpuid,
            msrs,
            regs,
            sregs,
            xsave,
            xcrs,
            debug_regs,
            lapic,
            mp_state,
            vcpu_events,
            tsc_khz,
        })
    }

    /// Reads every readable MSR of `indices`, skipping those KVM rejects.
    fn read_msrs(&self, indices: &[u32]) -> Result<Vec<kvm_bindings::kvm_msr_entry>, HvError> {
        let mut wanted: Vec<u32> = indices.to_vec();
        let mut saved = Vec::with_capacity(wanted.len());
        while !wanted.is_empty() {
            let chunk: Vec<kvm_bindings::kvm_msr_entry> = wanted
                .iter()
                .take(kvm_bindings::KVM_MAX_MSR_ENTRIES)
                .map(|&index| kvm_bindings::kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect();
            let mut msrs = Msrs::from_entries(&chunk).map_err(|_| HvError::Ioctl {
                op: "KVM_GET_MSRS",
                source: std::io::Error::other("MSR list too long"),
            })?;
            let n = self
                .fd
                .get_msrs(&mut msrs)
                .map_err(HvError::ioctl("KVM_GET_MSRS"))?;
            saved.extend_from_slice(&msrs.as_slice()[..n]);
            // KVM stops at the first MSR it cannot read: skip that one and go on.
            let consumed = (n + 1).min(chunk.len());
            wanted.drain(..consumed);
        }
        Ok(saved)
    }

    /// Writes a saved state back, in the order KVM needs (CPUID first, events last).
    pub fn restore_state(&self, state: &VcpuState) -> Result<(), HvError> {
        if let Some(khz) = state.tsc_khz {
            // Older hosts or a different TSC frequency: keep KVM's default rather than fail.
            let _ = self.fd.set_tsc_khz(khz);
        }
        let cpuid = CpuId::from_entries(&state.cpuid).map_err(|_| HvError::Ioctl {
            op: "KVM_SET_CPUID2",
            source: std::io::Error::other("saved CPUID list too long"),
        })?;
        self.set_cpuid(&cpuid)?;
        self.fd
            .set_mp_state(state.mp_state)
            .map_err(HvError::ioctl("KVM_SET_MP_STATE"))?;
        self.set_regs(&state.regs)?;
        self.set_sregs(&state.sregs)?;
        // SAFETY: `kvm_xsave` is the legacy fixed-size XSAVE area, read by KVM_GET_XSAVE from
        // a vCPU of the same host type; KVM validates its contents.
        unsafe { self.fd.set_xsave(&state.xsave) }.map_err(HvError::ioctl("KVM_SET_XSAVE"))?;
        self.fd
            .set_xcrs(&state.xcrs)
            .map_err(HvError::ioctl("KVM_SET_XCRS"))?;
        self.fd
            .set_debug_regs(&state.debug_regs)
            .map_err(HvError::ioctl("KVM_SET_DEBUGREGS"))?;
        self.set_lapic(&state.lapic)?;
        for chunk in state.msrs.chunks(kvm_bindings::KVM_MAX_MSR_ENTRIES) {
            let msrs = Msrs::from_entries(chunk).map_err(|_| HvError::Ioctl {
                op: "KVM_SET_MSRS",
                source: std::io::Error::other("MSR list too long"),
            })?;
            self.set_msrs(&msrs)?;
        }
        self.fd
            .set_vcpu_events(&state.vcpu_events)
            .map_err(HvError::ioctl("KVM_SET_VCPU_EVENTS"))
    }
}
