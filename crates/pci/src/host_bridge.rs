//! Device 00:00.0: the host bridge Linux looks for when it probes configuration mechanism #1.

use crate::bus::PciDevice;
use crate::config::{PciConfiguration, PciHeader};

const VENDOR_INTEL: u16 = 0x8086;
/// An Intel host bridge ID, as Cloud Hypervisor uses; any ID works, the class is what counts.
const DEVICE_HOST_BRIDGE: u16 = 0x0d57;
const CLASS_HOST_BRIDGE: u32 = 0x06_0000;

pub struct HostBridge {
    config: PciConfiguration,
}

impl HostBridge {
    pub fn new() -> Self {
        HostBridge {
            config: PciConfiguration::new(PciHeader {
                vendor_id: VENDOR_INTEL,
                device_id: DEVICE_HOST_BRIDGE,
                revision: 0,
                class_code: CLASS_HOST_BRIDGE,
                subsystem_vendor_id: 0,
                subsystem_id: 0,
            }),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for HostBridge {
    fn config_read(&mut self, reg: usize) -> u32 {
        if reg < crate::config::NUM_REGS {
            self.config.read_reg(reg)
        } else {
            0
        }
    }

    fn config_write(&mut self, reg: usize, offset: u64, data: &[u8]) {
        self.config.write_reg(reg, offset, data);
    }
}
