//! Identity-mapped page tables for the 64-bit boot entry.

use vm_memory::{Bytes, GuestAddress};

use crate::layout::*;
use crate::GuestMemoryMmap;

/// Page-table entry bits: present, writable, page size (2 MiB leaf).
const PRESENT_RW: u64 = 0x3;
const PAGE_SIZE_2M: u64 = 0x80;

#[derive(Debug, thiserror::Error)]
#[error("cannot write the boot page tables into guest memory")]
pub struct PagingError(#[source] pub vm_memory::GuestMemoryError);

/// Writes a PML4 → PDPT → 4 page directories identity map of the first 4 GiB with 2 MiB
/// pages and returns the CR3 value.
pub fn setup_identity_map(mem: &GuestMemoryMmap) -> Result<u64, PagingError> {
    let pd_count = IDENTITY_MAPPED_SIZE >> 30;
    mem.write_obj(PDPTE_START | PRESENT_RW, GuestAddress(PML4_START))
        .map_err(PagingError)?;
    for pd in 0..pd_count {
        let pd_addr = PDE_START + pd * 0x1000;
        mem.write_obj(pd_addr | PRESENT_RW, GuestAddress(PDPTE_START + pd * 8))
            .map_err(PagingError)?;
        for i in 0..512u64 {
            let phys = (pd << 30) | (i << 21);
            mem.write_obj(
                phys | PRESENT_RW | PAGE_SIZE_2M,
                GuestAddress(pd_addr + i * 8),
            )
            .map_err(PagingError)?;
        }
    }
    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_4g_identity() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert_eq!(setup_identity_map(&mem).unwrap(), PML4_START);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        let pdpte3: u64 = mem.read_obj(GuestAddress(PDPTE_START + 24)).unwrap();
        assert_eq!(pdpte3, (PDE_START + 0x3000) | 3);
        // Last 2 MiB page below 4 GiB.
        let last: u64 = mem
            .read_obj(GuestAddress(PDE_START + 0x3000 + 511 * 8))
            .unwrap();
        assert_eq!(last, 0xffe0_0000 | 0x83);
    }
}
