//! The configuration space of one PCI function (type 0 header, 256 bytes): register values,
//! which bits the guest may write, BAR sizing and the capability list.

/// Number of 32-bit registers in conventional configuration space.
pub const NUM_REGS: usize = 64;
/// First byte of the capability area (after the type 0 header).
const FIRST_CAP: usize = 0x40;
const STATUS_CAP_LIST: u32 = 1 << 20;
const COMMAND_REG: usize = 1;
/// Memory space, I/O space, bus master, INTx disable.
const COMMAND_WRITABLE: u32 = 0x0407;
const BAR0_REG: usize = 4;
pub const NUM_BARS: usize = 6;
const CAP_PTR_REG: usize = 0x34 / 4;
const INTERRUPT_REG: usize = 0x3c / 4;

/// Identity of a function: what goes in the first header registers.
#[derive(Debug, Clone, Copy)]
pub struct PciHeader {
    pub vendor_id: u16,
    pub device_id: u16,
    pub revision: u8,
    /// Class, subclass and programming interface (`0x060000` for a host bridge).
    pub class_code: u32,
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bar {
    addr: u32,
    size: u32,
}

#[derive(Debug, Clone)]
pub struct PciConfiguration {
    regs: [u32; NUM_REGS],
    writable: [u32; NUM_REGS],
    bars: [Option<Bar>; NUM_BARS],
    /// Byte offset of the next free capability slot, and of the last capability added.
    next_cap: usize,
    last_cap: Option<usize>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("BAR {0} does not exist or is in use")]
    BadBar(usize),
    #[error("BAR size {0:#x} is not a power of two of at least 16 bytes")]
    BadBarSize(u64),
    #[error("BAR address {0:#x} is not 32-bit or not aligned to its size")]
    BadBarAddress(u64),
    #[error("capability of {0} bytes does not fit in configuration space")]
    CapabilityTooLarge(usize),
    #[error("saved configuration space has {0} registers, expected {NUM_REGS}")]
    StateLength(usize),
    #[error("saved configuration space is of device {saved:#010x}, this function is {this:#010x}")]
    StateIdentity { saved: u32, this: u32 },
}

impl PciConfiguration {
    pub fn new(h: PciHeader) -> Self {
        let mut regs = [0u32; NUM_REGS];
        regs[0] = u32::from(h.device_id) << 16 | u32::from(h.vendor_id);
        regs[2] = h.class_code << 8 | u32::from(h.revision);
        regs[11] = u32::from(h.subsystem_id) << 16 | u32::from(h.subsystem_vendor_id);
        let mut writable = [0u32; NUM_REGS];
        writable[COMMAND_REG] = COMMAND_WRITABLE;
        // Interrupt line is scratch space for the OS; the pin stays 0 (no INTx).
        writable[INTERRUPT_REG] = 0xff;
        PciConfiguration {
            regs,
            writable,
            bars: [None; NUM_BARS],
            next_cap: FIRST_CAP,
            last_cap: None,
        }
    }

    /// Declares 32-bit memory BAR `index` of `size` bytes at `addr`.
    pub fn add_mem_bar32(&mut self, index: usize, addr: u64, size: u64) -> Result<(), ConfigError> {
        if index >= NUM_BARS || self.bars[index].is_some() {
            return Err(ConfigError::BadBar(index));
        }
        if size < 16 || !size.is_power_of_two() || size > 1 << 31 {
            return Err(ConfigError::BadBarSize(size));
        }
        if !addr.is_multiple_of(size) || addr.saturating_add(size) > 1 << 32 {
            return Err(ConfigError::BadBarAddress(addr));
        }
        let (addr, size) = (addr as u32, size as u32);
        self.bars[index] = Some(Bar { addr, size });
        self.regs[BAR0_REG + index] = addr;
        self.writable[BAR0_REG + index] = !(size - 1);
        Ok(())
    }

    /// The address BAR `index` was placed at (not what the guest may have written since).
    pub fn bar_addr(&self, index: usize) -> Option<u64> {
        self.bars.get(index)?.map(|b| u64::from(b.addr))
    }

    /// Appends a capability. `body` starts with the capability ID; its second byte (the next
    /// pointer) is filled in here. Returns the capability's offset in configuration space.
    /// `writable` gives the guest-writable bits per body byte (same length as `body`, or empty).
    pub fn add_capability(&mut self, body: &[u8], writable: &[u8]) -> Result<usize, ConfigError> {
        let len = body.len();
        let offset = self.next_cap;
        let end = offset + len;
        if len < 2 || end > NUM_REGS * 4 {
            return Err(ConfigError::CapabilityTooLarge(len));
        }
        for (i, &b) in body.iter().enumerate() {
            let b = if i == 1 { 0 } else { b };
            self.set_byte(offset + i, b);
            if let Some(&w) = writable.get(i) {
                let (reg, shift) = ((offset + i) / 4, ((offset + i) % 4) * 8);
                self.writable[reg] |= u32::from(w) << shift;
            }
        }
        match self.last_cap {
            Some(prev) => self.set_byte(prev + 1, offset as u8),
            None => {
                self.regs[CAP_PTR_REG] = offset as u32;
                self.regs[1] |= STATUS_CAP_LIST;
            }
        }
        self.last_cap = Some(offset);
        self.next_cap = (end + 3) & !3;
        Ok(offset)
    }

    fn set_byte(&mut self, at: usize, b: u8) {
        let (reg, shift) = (at / 4, (at % 4) * 8);
        self.regs[reg] = (self.regs[reg] & !(0xff << shift)) | u32::from(b) << shift;
    }

    /// The registers, for a snapshot.
    pub fn save_state(&self) -> Vec<u32> {
        self.regs.to_vec()
    }

    /// Takes the guest-writable bits of saved registers (command, BARs, capability
    /// controls); the read-only rest is this function's own. The saved vendor/device ID
    /// must be this function's.
    pub fn restore_state(&mut self, saved: &[u32]) -> Result<(), ConfigError> {
        if saved.len() != NUM_REGS {
            return Err(ConfigError::StateLength(saved.len()));
        }
        if saved[0] != self.regs[0] {
            return Err(ConfigError::StateIdentity {
                saved: saved[0],
                this: self.regs[0],
            });
        }
        for (reg, &value) in saved.iter().enumerate() {
            let w = self.writable[reg];
            self.regs[reg] = (self.regs[reg] & !w) | (value & w);
        }
        Ok(())
    }

    /// Reads register `reg` (out of range reads as all ones).
    pub fn read_reg(&self, reg: usize) -> u32 {
        self.regs.get(reg).copied().unwrap_or(0xffff_ffff)
    }

    /// Writes `data` at byte `offset` of register `reg`, keeping read-only bits. Accesses that
    /// cross the register or fall outside configuration space are ignored.
    pub fn write_reg(&mut self, reg: usize, offset: u64, data: &[u8]) {
        let Some((value, mask)) = merge(offset, data) else {
            return;
        };
        if reg >= NUM_REGS {
            return;
        }
        let mask = mask & self.writable[reg];
        self.regs[reg] = (self.regs[reg] & !mask) | (value & mask);
    }
}

/// Turns a 1, 2 or 4-byte access at `offset` within a register into (value, byte mask),
/// shifted into place. `None` for other sizes or accesses that cross the register.
pub fn merge(offset: u64, data: &[u8]) -> Option<(u32, u32)> {
    let len = data.len();
    if !matches!(len, 1 | 2 | 4) || offset.checked_add(len as u64)? > 4 {
        return None;
    }
    let shift = offset as u32 * 8;
    let mut v = [0u8; 4];
    v[..len].copy_from_slice(data);
    let value = u32::from_le_bytes(v) << shift;
    let mask = if len == 4 {
        u32::MAX
    } else {
        ((1u32 << (len * 8)) - 1) << shift
    };
    Some((value, mask))
}

/// Copies the bytes of `value` at `offset` into `data` (1, 2 or 4 bytes within the register);
/// anything else reads as all ones.
pub fn extract(value: u32, offset: u64, data: &mut [u8]) {
    let bytes = value.to_le_bytes();
    let fits = matches!(data.len(), 1 | 2 | 4) && offset.saturating_add(data.len() as u64) <= 4;
    if fits {
        let o = offset as usize;
        data.copy_from_slice(&bytes[o..o + data.len()]);
    } else {
        data.fill(0xff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PciConfiguration {
        PciConfiguration::new(PciHeader {
            vendor_id: 0x1af4,
            device_id: 0x1042,
            revision: 1,
            class_code: 0x018000,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x40,
        })
    }

    #[test]
    fn header_ids_are_readable() {
        let c = cfg();
        assert_eq!(c.read_reg(0), 0x1042_1af4);
        assert_eq!(c.read_reg(2), 0x0180_0001);
        assert_eq!(c.read_reg(99), 0xffff_ffff);
    }

    #[test]
    fn bar_sizing_reports_the_size_and_keeps_the_address() {
        let mut c = cfg();
        c.add_mem_bar32(0, 0xc000_0000, 0x8000).unwrap();
        c.write_reg(4, 0, &[0xff; 4]);
        assert_eq!(c.read_reg(4), 0xffff_8000);
        c.write_reg(4, 0, &0xc000_0000u32.to_le_bytes());
        assert_eq!(c.read_reg(4), 0xc000_0000);
        assert_eq!(c.bar_addr(0), Some(0xc000_0000));
        assert_eq!(
            c.add_mem_bar32(0, 0xc001_0000, 0x8000),
            Err(ConfigError::BadBar(0))
        );
        assert!(c.add_mem_bar32(1, 0xc000_0100, 0x8000).is_err());
        assert!(c.add_mem_bar32(1, 0xc000_0000, 0x3000).is_err());
    }

    #[test]
    fn capabilities_chain_and_protect_read_only_bits() {
        let mut c = cfg();
        let a = c
            .add_capability(&[0x11, 0, 0x03, 0x00], &[0, 0, 0, 0xc0])
            .unwrap();
        let b = c
            .add_capability(&[0x09, 0, 16, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[])
            .unwrap();
        assert_eq!((a, b), (0x40, 0x44));
        assert_eq!(c.read_reg(0x34 / 4) & 0xff, 0x40);
        assert_ne!(c.read_reg(1) & STATUS_CAP_LIST, 0);
        assert_eq!((c.read_reg(0x40 / 4) >> 8) & 0xff, 0x44);
        c.write_reg(0x40 / 4, 2, &[0xff, 0xff]);
        assert_eq!(c.read_reg(0x40 / 4) >> 16, 0xc003);
        // Read-only capability bytes stay as they are.
        c.write_reg(0x44 / 4, 0, &[0; 4]);
        assert_eq!(c.read_reg(0x44 / 4) & 0xff, 0x09);
        assert!(c.add_capability(&[0u8; 300], &[]).is_err());
    }

    #[test]
    fn state_round_trips_writable_bits_only() {
        let mut c = cfg();
        c.add_mem_bar32(0, 0xc000_0000, 0x8000).unwrap();
        c.write_reg(1, 0, &0x0406u32.to_le_bytes());
        let mut saved = c.save_state();
        let mut fresh = cfg();
        fresh.add_mem_bar32(0, 0xc000_0000, 0x8000).unwrap();
        saved[2] = 0xdead_beef; // read-only class code: not taken
        fresh.restore_state(&saved).unwrap();
        assert_eq!(fresh.read_reg(1) & 0xffff, 0x0406);
        assert_eq!(fresh.read_reg(2), 0x0180_0001);
        assert_eq!(
            fresh.restore_state(&saved[..10]),
            Err(ConfigError::StateLength(10))
        );
        saved[0] = 0x1041_1af4;
        assert!(matches!(
            fresh.restore_state(&saved),
            Err(ConfigError::StateIdentity { .. })
        ));
    }

    #[test]
    fn odd_accesses_are_ignored() {
        let mut c = cfg();
        let before = c.read_reg(1);
        c.write_reg(1, 3, &[0xff, 0xff]);
        c.write_reg(1, 0, &[0xff; 3]);
        c.write_reg(1, u64::MAX, &[0xff]);
        c.write_reg(200, 0, &[0xff; 4]);
        assert_eq!(c.read_reg(1), before);
        let mut d = [0u8; 3];
        extract(0x1234_5678, 0, &mut d);
        assert_eq!(d, [0xff; 3]);
        let mut d = [0u8; 2];
        extract(0x1234_5678, 2, &mut d);
        assert_eq!(d, [0x34, 0x12]);
    }
}
