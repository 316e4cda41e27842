//! `hv`: the only crate that talks to KVM.
//!
//! Everything above it (arch setup, devices, the VMM) sees a [`Hypervisor`], a [`Vm`] and
//! [`Vcpu`]s, and a [`VmExit`] enum; `kvm-ioctls` never leaks upward except through the plain
//! data types re-exported from `kvm-bindings` in [`types`].

mod error;
mod hypervisor;
mod vcpu;
mod vm;

pub use error::HvError;
pub use hypervisor::Hypervisor;
pub use vcpu::{Vcpu, VcpuState, VmExit};
pub use vm::{IoEventAddress, IrqRouter, MsiMessage, Vm, VmState};

/// Plain KVM data types (register files, CPUID and MSR lists) used by arch setup.
pub mod types {
    pub use kvm_bindings::{
        kvm_cpuid_entry2, kvm_dtable, kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs,
        kvm_segment, kvm_sregs, CpuId, Msrs, KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        KVM_MAX_CPUID_ENTRIES,
    };
}
