//! A KVM virtual machine: memory slots, in-kernel interrupt controllers and timers, irqfds,
//! vCPU creation.

use std::sync::Arc;

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::{HvError, Vcpu};

mod routing;
pub use routing::{IoEventAddress, IrqRouter, MsiMessage};

/// Guest-physical address of the three-page TSS region KVM on Intel needs; it must not overlap
/// guest RAM that the guest uses, so it sits at the top of the 32-bit space, inside the hole.
pub const TSS_ADDRESS: usize = 0xfffb_d000;
/// One page for the Intel real-mode identity map, just below the TSS.
pub const IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// A KVM VM.
#[derive(Debug)]
pub struct Vm {
    /// Shared with the [`IrqRouter`], which devices use at run time.
    fd: Arc<VmFd>,
}

impl Vm {
    pub(crate) fn new(fd: VmFd) -> Self {
        Vm { fd: Arc::new(fd) }
    }

    /// Registers `size` bytes of host memory at `host_addr` as guest-physical memory at
    /// `guest_addr` in memory slot `slot`.
    ///
    /// # Safety
    /// `host_addr..host_addr + size` must be a valid mapping owned by the caller that outlives
    /// this VM (or is removed from the slot before it is unmapped).
    pub unsafe fn set_user_memory_region(
        &self,
        slot: u32,
        guest_addr: u64,
        size: u64,
        host_addr: u64,
    ) -> Result<(), HvError> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: guest_addr,
            memory_size: size,
            userspace_addr: host_addr,
        };
        // SAFETY: the caller guarantees the host mapping is valid for the VM's lifetime.
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(HvError::ioctl("KVM_SET_USER_MEMORY_REGION"))
    }

    /// Sets the TSS and identity-map addresses (needed on Intel before vCPUs run).
    pub fn set_tss_and_identity_map(&self) -> Result<(), HvError> {
        self.fd
            .set_identity_map_address(IDENTITY_MAP_ADDRESS)
            .map_err(HvError::ioctl("KVM_SET_IDENTITY_MAP_ADDR"))?;
        self.fd
            .set_tss_address(TSS_ADDRESS)
            .map_err(HvError::ioctl("KVM_SET_TSS_ADDR"))
    }

    /// Creates the in-kernel PIC pair, IOAPIC and (per vCPU) LAPICs, and the in-kernel PIT.
    pub fn create_irqchip_and_pit(&self) -> Result<(), HvError> {
        self.fd
            .create_irq_chip()
            .map_err(HvError::ioctl("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd
            .create_pit2(pit)
            .map_err(HvError::ioctl("KVM_CREATE_PIT2"))
    }

    /// Makes a write to `evt` raise guest interrupt line `gsi` (edge-triggered).
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), HvError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(HvError::ioctl("KVM_IRQFD"))
    }

    /// Creates vCPU number `id` (its initial APIC ID).
    pub fn create_vcpu(&self, id: u8) -> Result<Vcpu, HvError> {
        let fd = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(HvError::ioctl("KVM_CREATE_VCPU"))?;
        Ok(Vcpu::new(fd, id))
    }
}

/// The VM-wide in-kernel device state a snapshot needs: PIC pair, IOAPIC, PIT, kvmclock.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VmState {
    pub pic_master: kvm_bindings::kvm_irqchip,
    pub pic_slave: kvm_bindings::kvm_irqchip,
    pub ioapic: kvm_bindings::kvm_irqchip,
    pub pit: kvm_bindings::kvm_pit_state2,
    pub clock: kvm_bindings::kvm_clock_data,
}

fn irqchip(id: u32) -> kvm_bindings::kvm_irqchip {
    kvm_bindings::kvm_irqchip {
        chip_id: id,
        ..Default::default()
    }
}

impl Vm {
    /// Reads the in-kernel irqchips, PIT and clock.
    pub fn save_state(&self) -> Result<VmState, HvError> {
        let mut chips = [
            irqchip(kvm_bindings::KVM_IRQCHIP_PIC_MASTER),
            irqchip(kvm_bindings::KVM_IRQCHIP_PIC_SLAVE),
            irqchip(kvm_bindings::KVM_IRQCHIP_IOAPIC),
        ];
        for chip in &mut chips {
            self.fd
                .get_irqchip(chip)
                .map_err(HvError::ioctl("KVM_GET_IRQCHIP"))?;
        }
        let pit = self.fd.get_pit2().map_err(HvError::ioctl("KVM_GET_PIT2"))?;
        let mut clock = self
            .fd
            .get_clock()
            .map_err(HvError::ioctl("KVM_GET_CLOCK"))?;
        // Only the clock value is restored; the flags describe this host's clock source.
        clock.flags = 0;
        let [pic_master, pic_slave, ioapic] = chips;
        Ok(VmState {
            pic_master,
            pic_slave,
            ioapic,
            pit,
            clock,
        })
    }

    /// Writes saved irqchip, PIT and clock state back (after the vCPUs exist).
    pub fn restore_state(&self, state: &VmState) -> Result<(), HvError> {
        for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
            self.fd
                .set_irqchip(chip)
                .map_err(HvError::ioctl("KVM_SET_IRQCHIP"))?;
        }
        self.fd
            .set_pit2(&state.pit)
            .map_err(HvError::ioctl("KVM_SET_PIT2"))?;
        self.fd
            .set_clock(&state.clock)
            .map_err(HvError::ioctl("KVM_SET_CLOCK"))
    }
}
