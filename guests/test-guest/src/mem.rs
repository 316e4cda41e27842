//! Reading guest-physical memory the VMM wrote (boot info, MP and ACPI tables).
//!
//! Parsers take a [`Mem`] so the same code reads identity-mapped physical memory in the
//! guest and a byte vector in host unit tests. Every read is bounds-checked: a bad pointer
//! in a table yields `None`, never a fault.

/// Physical memory the parsers may read.
pub trait Mem {
    /// Fills `buf` from `addr`; false if the range is not readable.
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;

    /// `len` bytes at `addr`, borrowed in place (no copy).
    fn bytes(&self, addr: u64, len: usize) -> Option<&[u8]>;

    fn u8(&self, addr: u64) -> Option<u8> {
        let mut b = [0u8; 1];
        self.read(addr, &mut b).then_some(b[0])
    }

    fn u16(&self, addr: u64) -> Option<u16> {
        let mut b = [0u8; 2];
        self.read(addr, &mut b).then(|| u16::from_le_bytes(b))
    }

    fn u32(&self, addr: u64) -> Option<u32> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b).then(|| u32::from_le_bytes(b))
    }

    fn u64(&self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b).then(|| u64::from_le_bytes(b))
    }

    /// 8-bit sum of `len` bytes at `addr` (ACPI and MP checksums make it 0).
    fn sum(&self, addr: u64, len: u64) -> Option<u8> {
        let mut s = 0u8;
        let mut chunk = [0u8; 64];
        let mut off = 0;
        while off < len {
            let n = (len - off).min(chunk.len() as u64) as usize;
            if !self.read(addr.checked_add(off)?, &mut chunk[..n]) {
                return None;
            }
            s = chunk[..n].iter().fold(s, |a, &b| a.wrapping_add(b));
            off += n as u64;
        }
        Some(s)
    }
}

/// The identity-mapped first 4 GiB of guest-physical memory.
pub struct PhysMem;

/// Both entry paths identity-map [0, 4 GiB).
const MAPPED_END: u64 = 1 << 32;

/// True if [addr, addr + len) lies inside the identity-mapped [1, 4 GiB).
fn mapped(addr: u64, len: usize) -> bool {
    addr != 0
        && addr
            .checked_add(len as u64)
            .is_some_and(|end| end <= MAPPED_END)
}

impl Mem for PhysMem {
    fn bytes(&self, addr: u64, len: usize) -> Option<&[u8]> {
        if !mapped(addr, len) {
            return None;
        }
        // SAFETY: the range is identity-mapped, non-null RAM the VMM wrote before boot
        // (boot info, command line); the guest never writes it, so the shared borrow holds.
        Some(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
    }

    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        if !mapped(addr, buf.len()) {
            return false;
        }
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: [addr, end) lies inside the identity-mapped [1, 4 GiB); reading RAM
            // the VMM wrote or a device window has no side effects the guest cares about.
            *b = unsafe { core::ptr::read_volatile((addr + i as u64) as *const u8) };
        }
        true
    }
}

/// A byte vector standing in for physical memory at `base` (unit tests).
#[cfg(test)]
pub struct VecMem {
    pub base: u64,
    pub bytes: std::vec::Vec<u8>,
}

#[cfg(test)]
impl VecMem {
    pub fn new(base: u64, len: usize) -> Self {
        Self {
            base,
            bytes: vec![0; len],
        }
    }

    pub fn write(&mut self, addr: u64, data: &[u8]) {
        let off = (addr - self.base) as usize;
        self.bytes[off..off + data.len()].copy_from_slice(data);
    }

    /// Sets the byte at `addr` so that `len` bytes from `start` sum to zero.
    pub fn fix_checksum(&mut self, start: u64, len: u64, at: u64) {
        self.write(at, &[0]);
        let s = self.sum(start, len).expect("in range");
        self.write(at, &[0u8.wrapping_sub(s)]);
    }
}

#[cfg(test)]
impl Mem for VecMem {
    fn bytes(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let off = addr.checked_sub(self.base)? as usize;
        self.bytes.get(off..off.checked_add(len)?)
    }

    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let Some(off) = addr.checked_sub(self.base) else {
            return false;
        };
        let off = off as usize;
        match self.bytes.get(off..off + buf.len()) {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounds_checked() {
        let m = VecMem::new(0x1000, 16);
        assert_eq!(m.u32(0x1000), Some(0));
        assert_eq!(m.u32(0x100e), None);
        assert_eq!(m.u8(0xfff), None);
    }

    #[test]
    fn checksum_fixup_sums_to_zero() {
        let mut m = VecMem::new(0, 100);
        m.write(0, b"hello world");
        m.fix_checksum(0, 100, 50);
        assert_eq!(m.sum(0, 100), Some(0));
    }
}
