//! Places BARs inside the 32-bit MMIO window with `vm-allocator`.

use vm_allocator::{AddressAllocator, AllocPolicy};

#[derive(Debug, thiserror::Error)]
pub enum BarAllocatorError {
    #[error("invalid BAR window {base:#x}+{size:#x}")]
    Window { base: u64, size: u64 },
    #[error("no room for a {size:#x}-byte BAR in the PCI MMIO window")]
    Exhausted { size: u64 },
}

/// Hands out naturally aligned ranges of the BAR window.
#[derive(Debug)]
pub struct BarAllocator {
    inner: AddressAllocator,
}

impl BarAllocator {
    pub fn new(base: u64, size: u64) -> Result<Self, BarAllocatorError> {
        let inner = AddressAllocator::new(base, size)
            .map_err(|_| BarAllocatorError::Window { base, size })?;
        Ok(BarAllocator { inner })
    }

    /// Allocates `size` bytes (a power of two) aligned to `size`; returns the address.
    pub fn allocate(&mut self, size: u64) -> Result<u64, BarAllocatorError> {
        self.inner
            .allocate(size, size, AllocPolicy::FirstMatch)
            .map(|r| r.start())
            .map_err(|_| BarAllocatorError::Exhausted { size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_aligned_and_disjoint() {
        let mut a = BarAllocator::new(0xc000_0000, 0x10_0000).unwrap();
        let x = a.allocate(0x8000).unwrap();
        let y = a.allocate(0x1000).unwrap();
        let z = a.allocate(0x8000).unwrap();
        assert_eq!(x, 0xc000_0000);
        assert_eq!(y % 0x1000, 0);
        assert_eq!(z % 0x8000, 0);
        assert!(y >= x + 0x8000 && z >= y + 0x1000);
        assert!(a.allocate(0x20_0000).is_err());
    }
}
