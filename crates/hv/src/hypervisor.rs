//! The KVM system handle: capability checks, supported CPUID, VM creation.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};

use crate::{HvError, Vm};

/// An open `/dev/kvm`.
#[derive(Debug)]
pub struct Hypervisor {
    kvm: Kvm,
}

/// Capabilities kapsel cannot run without, checked once at open.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Hlt, "KVM_CAP_HLT"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::PitState2, "KVM_CAP_PIT_STATE2"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

impl Hypervisor {
    /// Opens `/dev/kvm` and checks the API version and required capabilities.
    pub fn new() -> Result<Self, HvError> {
        let kvm = Kvm::new().map_err(|e| HvError::OpenKvm(std::io::Error::from(e)))?;
        let version = kvm.get_api_version();
        if version != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(HvError::ApiVersion(version));
        }
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(*cap) {
                return Err(HvError::MissingCap(name));
            }
        }
        Ok(Hypervisor { kvm })
    }

    /// The largest number of vCPUs one VM may have on this host.
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }

    /// The CPUID leaves KVM can present to a guest on this host.
    pub fn supported_cpuid(&self) -> Result<CpuId, HvError> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(HvError::ioctl("KVM_GET_SUPPORTED_CPUID"))
    }

    /// The MSRs KVM can save and restore for a vCPU on this host.
    pub fn msr_index_list(&self) -> Result<Vec<u32>, HvError> {
        Ok(self
            .kvm
            .get_msr_index_list()
            .map_err(HvError::ioctl("KVM_GET_MSR_INDEX_LIST"))?
            .as_slice()
            .to_vec())
    }

    /// Whether the host supports the TSC-deadline timer in the in-kernel LAPIC.
    pub fn has_tsc_deadline_timer(&self) -> bool {
        self.kvm.check_extension(Cap::TscDeadlineTimer)
    }

    /// Creates an empty VM (no memory, no vCPUs).
    pub fn create_vm(&self) -> Result<Vm, HvError> {
        let fd = self
            .kvm
            .create_vm()
            .map_err(HvError::ioctl("KVM_CREATE_VM"))?;
        Ok(Vm::new(fd))
    }
}
