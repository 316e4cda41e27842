//! PCI bus 0 and the two configuration mechanisms that reach it: the legacy port pair
//! 0xCF8 (address) / 0xCFC (data) and ECAM (memory-mapped, announced in the ACPI MCFG table).

use std::sync::{Arc, Mutex, PoisonError};

use devices::BusDevice;

use crate::config::{extract, merge};

/// Port of the CONFIG_ADDRESS register; CONFIG_DATA follows at +4.
pub const PCI_CONFIG_IO_PORT: u64 = 0xcf8;
pub const PCI_CONFIG_IO_LEN: u64 = 8;
pub const SLOTS: usize = 32;
/// Bytes of ECAM space per bus (32 devices × 8 functions × 4 KiB).
pub const ECAM_BUS_SIZE: u64 = 1 << 20;

/// A function on the bus, as seen through configuration space.
pub trait PciDevice: Send {
    /// Reads 32-bit register `reg` (0..64; anything above reads as zero).
    fn config_read(&mut self, reg: usize) -> u32;
    /// Writes `data` (1, 2 or 4 bytes, guest-chosen) at byte `offset` of register `reg`.
    fn config_write(&mut self, reg: usize, offset: u64, data: &[u8]);
}

pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// Bus 0: up to 32 devices, function 0 each.
#[derive(Default)]
pub struct PciBus {
    slots: Mutex<Vec<Option<SharedPciDevice>>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciBusError {
    #[error("all {SLOTS} PCI slots are in use")]
    Full,
}

impl PciBus {
    pub fn new() -> Arc<Self> {
        Arc::new(PciBus {
            slots: Mutex::new(vec![None; SLOTS]),
        })
    }

    /// Puts `dev` in the first free slot and returns the slot number.
    pub fn add(&self, dev: SharedPciDevice) -> Result<u8, PciBusError> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let free = slots
            .iter()
            .position(Option::is_none)
            .ok_or(PciBusError::Full)?;
        slots[free] = Some(dev);
        Ok(free as u8)
    }

    fn device(&self, bus: u8, dev: u8, func: u8) -> Option<SharedPciDevice> {
        if bus != 0 || func != 0 {
            return None;
        }
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.get(usize::from(dev))?.clone()
    }

    /// Reads a register of a function; absent functions read as all ones.
    pub fn read(&self, bus: u8, dev: u8, func: u8, reg: usize) -> u32 {
        match self.device(bus, dev, func) {
            Some(d) => d
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .config_read(reg),
            None => 0xffff_ffff,
        }
    }

    /// Writes a register of a function; writes to absent functions vanish.
    pub fn write(&self, bus: u8, dev: u8, func: u8, reg: usize, offset: u64, data: &[u8]) {
        if let Some(d) = self.device(bus, dev, func) {
            d.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .config_write(reg, offset, data);
        }
    }
}

/// Decoded (bus, device, function, register) of a configuration access.
type Bdfr = (u8, u8, u8, usize);

/// Configuration mechanism #1: ports 0xCF8–0xCFF.
pub struct PciConfigIo {
    bus: Arc<PciBus>,
    address: u32,
}

impl PciConfigIo {
    pub fn new(bus: Arc<PciBus>) -> Self {
        PciConfigIo { bus, address: 0 }
    }

    fn target(&self) -> Option<Bdfr> {
        if self.address & 0x8000_0000 == 0 {
            return None;
        }
        let a = self.address;
        Some((
            (a >> 16) as u8,
            ((a >> 11) & 0x1f) as u8,
            ((a >> 8) & 0x7) as u8,
            ((a >> 2) & 0x3f) as usize,
        ))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0..=3 => extract(self.address, offset, data),
            4..=7 => {
                let value = match self.target() {
                    Some((b, d, f, r)) => self.bus.read(b, d, f, r),
                    None => 0xffff_ffff,
                };
                extract(value, offset - 4, data);
            }
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            // Only whole-dword writes set the address (byte writes to 0xCFB probe for
            // mechanism #2, which this bus does not have).
            0 if data.len() == 4 => {
                if let Some((v, _)) = merge(0, data) {
                    self.address = v & 0x80ff_fffc;
                }
            }
            4..=7 => {
                if let Some((b, d, f, r)) = self.target() {
                    self.bus.write(b, d, f, r, offset - 4, data);
                }
            }
            _ => {}
        }
    }
}

/// ECAM (MMCONFIG): one 4 KiB page per function; this bus decodes bus 0 only.
pub struct PciConfigMmio {
    bus: Arc<PciBus>,
}

impl PciConfigMmio {
    pub fn new(bus: Arc<PciBus>) -> Self {
        PciConfigMmio { bus }
    }

    fn decode(offset: u64) -> (Bdfr, u64) {
        let bus = (offset >> 20) as u8;
        let dev = ((offset >> 15) & 0x1f) as u8;
        let func = ((offset >> 12) & 0x7) as u8;
        let reg = ((offset & 0xfff) >> 2) as usize;
        ((bus, dev, func, reg), offset & 3)
    }
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let ((b, d, f, r), sub) = Self::decode(offset);
        // Extended configuration space (offsets 256..4096) of a conventional function is empty.
        let value = if r >= crate::config::NUM_REGS {
            if self.bus.device(b, d, f).is_some() {
                0
            } else {
                0xffff_ffff
            }
        } else {
            self.bus.read(b, d, f, r)
        };
        extract(value, sub, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let ((b, d, f, r), sub) = Self::decode(offset);
        if r < crate::config::NUM_REGS {
            self.bus.write(b, d, f, r, sub, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host_bridge::HostBridge;

    fn bus_with_bridge() -> Arc<PciBus> {
        let bus = PciBus::new();
        assert_eq!(bus.add(Arc::new(Mutex::new(HostBridge::new()))), Ok(0));
        bus
    }

    fn io_read32(io: &mut PciConfigIo, addr: u32) -> u32 {
        io.write(0, &addr.to_le_bytes());
        let mut d = [0u8; 4];
        io.read(4, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn port_io_reaches_the_host_bridge_and_nothing_else() {
        let mut io = PciConfigIo::new(bus_with_bridge());
        assert_eq!(io_read32(&mut io, 0x8000_0000) & 0xffff, 0x8086);
        assert_eq!(io_read32(&mut io, 0x8000_0008) >> 8, 0x06_0000);
        assert_eq!(io_read32(&mut io, 0x8000_0800), 0xffff_ffff); // slot 1
        assert_eq!(io_read32(&mut io, 0x8001_0000), 0xffff_ffff); // bus 1
        assert_eq!(io_read32(&mut io, 0x8000_0100), 0xffff_ffff); // function 1
        assert_eq!(io_read32(&mut io, 0x0000_0000), 0xffff_ffff); // disabled
                                                                  // The address register reads back, byte probes at 0xCFB leave it alone.
        io.write(0, &0x8000_0000u32.to_le_bytes());
        io.write(3, &[1]);
        let mut d = [0u8; 4];
        io.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x8000_0000);
        // Sub-dword data reads.
        let mut w = [0u8; 2];
        io.read(6, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x0d57);
    }

    #[test]
    fn ecam_decodes_bus_device_function() {
        let mut mmio = PciConfigMmio::new(bus_with_bridge());
        let mut d = [0u8; 4];
        mmio.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0d57_8086);
        mmio.read(1 << 15, &mut d);
        assert_eq!(d, [0xff; 4]);
        mmio.read(0x100, &mut d);
        assert_eq!(d, [0; 4]);
        mmio.write(0x100, &[1, 2, 3, 4]);
        mmio.write(u64::MAX, &[1; 8]);
        let mut big = [0u8; 8];
        mmio.read(0, &mut big);
        assert_eq!(big, [0xff; 8]);
    }

    #[test]
    fn bus_fills_up() {
        let bus = PciBus::new();
        for i in 0..SLOTS {
            assert_eq!(
                bus.add(Arc::new(Mutex::new(HostBridge::new()))),
                Ok(i as u8)
            );
        }
        assert_eq!(
            bus.add(Arc::new(Mutex::new(HostBridge::new()))),
            Err(PciBusError::Full)
        );
    }
}
