//! The modern virtio-pci transport (virtio 1.x §4.1): one function with one 32-bit memory
//! BAR holding the common configuration, ISR status, device configuration, queue notify
//! area and the MSI-X table and PBA; vendor capabilities in configuration space point at
//! each region.
//!
//! BAR 0 layout (`BAR_SIZE` bytes):
//! ```text
//! 0x0000 common configuration      0x3000 notify (queue i at 0x3000 + 4·i; ioeventfds)
//! 0x1000 ISR status                0x4000 MSI-X table
//! 0x2000 device configuration      0x6000 MSI-X PBA
//! ```

mod common_config;
#[cfg(test)]
mod hostile_tests;
mod interrupt;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use arch::GuestMemoryMmap;
use devices::BusDevice;
use virtio::VirtioDevice;
use vmm_sys_util::eventfd::EventFd;

pub use common_config::{
    CommonConfig, CommonConfigError, CommonConfigState, QueueRegs, STATUS_NEEDS_RESET,
};
pub use interrupt::{Vectors, VirtioInterrupt, NO_VECTOR};

use crate::bus::PciDevice;
use crate::config::{ConfigError, PciConfiguration, PciHeader, NUM_REGS};
use crate::msix::{MsiSink, Msix, MsixState, MsixStateError};

pub const VIRTIO_VENDOR_ID: u16 = 0x1af4;
/// Modern devices are 0x1040 + the virtio device type.
const MODERN_DEVICE_BASE: u16 = 0x1040;
const SUBSYSTEM_ID: u16 = 0x1100;
pub const BAR_SIZE: u64 = 0x8000;
const COMMON_OFFSET: u64 = 0x0000;
const ISR_OFFSET: u64 = 0x1000;
const DEVICE_OFFSET: u64 = 0x2000;
const NOTIFY_OFFSET: u64 = 0x3000;
const MSIX_TABLE_OFFSET: u64 = 0x4000;
const MSIX_PBA_OFFSET: u64 = 0x6000;
const REGION_LEN: u64 = 0x1000;
pub const NOTIFY_MULTIPLIER: u32 = 4;
/// Largest number of queues the notify region and the MSI-X table have room for.
pub const MAX_QUEUES: usize = (REGION_LEN / NOTIFY_MULTIPLIER as u64) as usize;

const CAP_VENDOR: u8 = 0x09;
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;

#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    #[error("invalid PCI configuration")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Common(#[from] CommonConfigError),
    #[error("device has {0} queues; virtio-pci here supports at most {MAX_QUEUES}")]
    TooManyQueues(usize),
    #[error(transparent)]
    Msix(#[from] MsixStateError),
    #[error(transparent)]
    State(#[from] virtio::StateError),
}

/// The saved state of one virtio-pci function: configuration space (command register,
/// BAR, MSI-X control), the MSI-X table and PBA, the ISR, and the common configuration
/// with the device's own state inside.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VirtioPciState {
    pub config: Vec<u32>,
    pub msix: MsixState,
    pub isr: u8,
    pub common: CommonConfigState,
}

/// PCI class code for a virtio device type (storage and network get their real classes).
fn class_code(device_type: u32) -> u32 {
    match device_type {
        1 => 0x02_0000,
        2 => 0x01_8000,
        _ => 0xff_0000,
    }
}

/// A `virtio_pci_cap` (16 bytes) or, with `multiplier`, a `virtio_pci_notify_cap` (20).
fn virtio_cap(cfg_type: u8, offset: u64, len: u64, multiplier: Option<u32>) -> Vec<u8> {
    let cap_len: u8 = if multiplier.is_some() { 20 } else { 16 };
    let mut c = vec![CAP_VENDOR, 0, cap_len, cfg_type, 0, 0, 0, 0];
    c.extend_from_slice(&(offset as u32).to_le_bytes());
    c.extend_from_slice(&(len as u32).to_le_bytes());
    if let Some(m) = multiplier {
        c.extend_from_slice(&m.to_le_bytes());
    }
    c
}

pub struct VirtioPciDevice {
    id: String,
    config: PciConfiguration,
    msix_cap_reg: usize,
    common: CommonConfig,
    msix: Arc<Msix>,
    isr: Arc<AtomicU8>,
    bar: u64,
}

impl VirtioPciDevice {
    /// MSI-X vectors a device needs: one per queue and one for configuration changes.
    pub fn msix_vectors(device: &dyn VirtioDevice) -> u16 {
        (device.queue_max_sizes().len().min(MAX_QUEUES) + 1) as u16
    }

    /// Wraps `device` in a transport whose BAR 0 sits at `bar_addr` (`BAR_SIZE` bytes,
    /// aligned); interrupts go to `sink`, which must serve [`Self::msix_vectors`] vectors.
    pub fn new(
        id: &str,
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        bar_addr: u64,
        sink: Box<dyn MsiSink>,
    ) -> Result<Self, VirtioPciError> {
        let queues = device.queue_max_sizes().len();
        if queues > MAX_QUEUES {
            return Err(VirtioPciError::TooManyQueues(queues));
        }
        let device_type = device.device_type();
        let mut config = PciConfiguration::new(PciHeader {
            vendor_id: VIRTIO_VENDOR_ID,
            device_id: MODERN_DEVICE_BASE.wrapping_add(device_type as u16),
            revision: 1,
            class_code: class_code(device_type),
            subsystem_vendor_id: VIRTIO_VENDOR_ID,
            subsystem_id: SUBSYSTEM_ID,
        });
        config.add_mem_bar32(0, bar_addr, BAR_SIZE)?;

        let msix = Arc::new(Msix::new(Self::msix_vectors(device.as_ref()), sink));
        let (body, writable) = msix.capability(0, MSIX_TABLE_OFFSET as u32, MSIX_PBA_OFFSET as u32);
        let msix_cap = config.add_capability(&body, &writable)?;
        config.add_capability(
            &virtio_cap(
                CFG_COMMON,
                COMMON_OFFSET,
                common_config::COMMON_CONFIG_LEN,
                None,
            ),
            &[],
        )?;
        config.add_capability(
            &virtio_cap(
                CFG_NOTIFY,
                NOTIFY_OFFSET,
                REGION_LEN,
                Some(NOTIFY_MULTIPLIER),
            ),
            &[],
        )?;
        config.add_capability(&virtio_cap(CFG_ISR, ISR_OFFSET, 1, None), &[])?;
        config.add_capability(
            &virtio_cap(CFG_DEVICE, DEVICE_OFFSET, REGION_LEN, None),
            &[],
        )?;

        let isr = Arc::new(AtomicU8::new(0));
        let vectors = Arc::new(Vectors::new(queues));
        let needs_reset = Arc::new(AtomicBool::new(false));
        let interrupt = Arc::new(VirtioInterrupt {
            msix: Arc::clone(&msix),
            vectors: Arc::clone(&vectors),
            isr: Arc::clone(&isr),
            needs_reset: Arc::clone(&needs_reset),
        });
        let common = CommonConfig::new(
            device,
            mem,
            interrupt,
            vectors,
            Arc::clone(&isr),
            msix.vectors(),
        )?
        .with_needs_reset(needs_reset);
        Ok(VirtioPciDevice {
            id: id.to_string(),
            config,
            msix_cap_reg: msix_cap / 4,
            common,
            msix,
            isr,
            bar: bar_addr,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Guest address of BAR 0.
    pub fn bar_addr(&self) -> u64 {
        self.bar
    }

    /// Each queue's notification address and the eventfd a write there must signal.
    pub fn notify_events(&self) -> impl Iterator<Item = (u64, &EventFd)> {
        let base = self.bar + NOTIFY_OFFSET;
        self.common
            .kicks()
            .iter()
            .enumerate()
            .map(move |(i, e)| (base + i as u64 * u64::from(NOTIFY_MULTIPLIER), e))
    }

    /// Snapshot, step 1: stops the device's workers (no request stays in flight, nothing
    /// writes guest memory) and saves the function. Follow with [`Self::resume`].
    pub fn pause_and_save(&mut self) -> Result<VirtioPciState, VirtioPciError> {
        let common = self.common.pause_and_save()?;
        Ok(VirtioPciState {
            config: self.config.save_state(),
            msix: self.msix.save_state(),
            isr: self.isr.load(Ordering::Acquire),
            common,
        })
    }

    /// Snapshot, step 2: the device serves its queues again.
    pub fn resume(&mut self) -> Result<(), VirtioPciError> {
        Ok(self.common.resume()?)
    }

    /// Restores a function built from the same configuration as the saved one: its
    /// configuration space, MSI-X (rebuilding the GSI routes from the table), and the device,
    /// re-activated at its saved queue positions. The ioeventfds and irqfds are this
    /// transport's own, registered when it was plugged in.
    pub fn restore_state(&mut self, st: &VirtioPciState) -> Result<(), VirtioPciError> {
        self.config.restore_state(&st.config)?;
        self.msix.restore_state(&st.msix)?;
        self.isr.store(st.isr, Ordering::Release);
        self.common.restore_state(&st.common)?;
        Ok(())
    }

    /// The device model behind the transport (for device-specific run-time operations).
    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.common.device_mut()
    }

    /// The virtio device status register as the driver reads it, DEVICE_NEEDS_RESET included
    /// (for tests and diagnostics).
    pub fn device_status(&self) -> u8 {
        self.common.status()
    }
}

impl PciDevice for VirtioPciDevice {
    fn config_read(&mut self, reg: usize) -> u32 {
        if reg < NUM_REGS {
            self.config.read_reg(reg)
        } else {
            0
        }
    }

    fn config_write(&mut self, reg: usize, offset: u64, data: &[u8]) {
        self.config.write_reg(reg, offset, data);
        if reg == self.msix_cap_reg {
            self.msix
                .set_control((self.config.read_reg(reg) >> 16) as u16);
        }
        if reg == 4 && self.config.read_reg(4) & !0xf != self.bar as u32 {
            // Sizing writes all ones first; anything else is a move this transport does not
            // follow (Linux keeps the addresses the VMM assigned inside the _CRS window).
            let written = self.config.read_reg(4);
            if written != !(BAR_SIZE as u32 - 1) {
                virtio::warn_limited!(id = %self.id, written, "guest moved BAR 0; ignored");
            }
        }
    }
}

impl BusDevice for VirtioPciDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let region = offset & !(REGION_LEN - 1);
        let off = offset - region;
        match region {
            COMMON_OFFSET => self.common.read(off, data),
            ISR_OFFSET => {
                data.fill(0);
                if off == 0 {
                    if let Some(b) = data.first_mut() {
                        *b = self.isr.swap(0, Ordering::AcqRel);
                    }
                }
            }
            DEVICE_OFFSET => self.common.device().read_config(off, data),
            MSIX_TABLE_OFFSET | 0x5000 => self.msix.read_table(offset - MSIX_TABLE_OFFSET, data),
            MSIX_PBA_OFFSET | 0x7000 => self.msix.read_pba(offset - MSIX_PBA_OFFSET, data),
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let region = offset & !(REGION_LEN - 1);
        let off = offset - region;
        match region {
            COMMON_OFFSET => self.common.write(off, data),
            DEVICE_OFFSET => self.common.device_mut().write_config(off, data),
            NOTIFY_OFFSET => {
                // Normally an ioeventfd catches this in KVM; this is the fallback path.
                let index = (off / u64::from(NOTIFY_MULTIPLIER)) as usize;
                if let Some(kick) = self.common.kicks().get(index) {
                    let _ = kick.write(1);
                }
            }
            MSIX_TABLE_OFFSET | 0x5000 => self.msix.write_table(offset - MSIX_TABLE_OFFSET, data),
            _ => {}
        }
    }
}
